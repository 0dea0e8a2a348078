"""Trusted key relay over VIRT links: ``reserve`` and ``relay`` ops on the KME-to-KME channel.

A CLIENT application backed by a VIRT link X-Y (controller/provision.py: the VIRT link is configured on
every node of the path, ``virt_next_hop`` naming the next node towards Y) gets its keys like this:

1. The master's KME at X checks the VIRT link's rate (``virt_bandwidth`` bit/s, a token bucket with one
   second of burst but at least ``max_key_size`` bits, so that a session of a few bit/s, as a repeater
   segment gives, still gets a key of any size now and then; over it: 503), draws a fresh random key
   ``K`` (:func:`secrets.token_bytes`) of ``size * number`` bits, assigns the key_IDs and computes the
   end-to-end digest
   ``digest(request_id, virt_qkdl_id, size, number, K)`` (:func:`agent.kme.store.digest`).
2. For each hop (n, m) along ``virt_next_hop`` the sender n takes a pad ``P`` of the same length from
   the hop's link (*Hop links* below), exactly once at both ends, as direct links do: if n is the
   link's drawing end (lower qkdn_id) it ``consume``\\ s ``P`` (journalled as a ``deliver`` request);
   otherwise it sends ``reserve`` and m draws ``P`` and keeps it *on disk* (``kme_pads``, in the same
   transaction as the consumption, so it survives a restart of m) until the ``relay`` op comes, and n
   ``consume_ranges`` the ranges m names, checking the hop digest (journalled as a ``draw`` request).
3. n sends ``relay`` with ``K xor P`` (base64), the hop ranges, the hop digest, the end-to-end digest,
   the SAEs and a time budget. m takes ``P`` (``consume_ranges`` and hop digest check, or its reserved
   pad), recovers ``K`` and checks the end-to-end digest (any node can: a relay that garbles ``K`` is
   caught by the next node or the far end), then either forwards ``K`` over its own next hop
   (re-padded) and answers when that hop answered, or, at Y, keeps the keys for the slave SAE under the
   same key_IDs (stored as kept for the last hop's link, so that an ``abort`` over that hop erases them).
4. Only when the whole chain answered 200 does X hand the keys to the master SAE.

Hop links: a hop runs over a *direct* link between the two nodes (:attr:`agent.kme.authz.LinkInfo.direct`),
both ends of which hold the same key blocks: a PHYS link (QKD), or the VIRT key link of a quantum repeater
segment whose two ends are the hop's nodes (no ``virt_prev_hop``/``virt_next_hop``, the ``key_qkdl_id`` of
the segment's ``qsdn-entanglement`` session, filled with identical BBM92 blocks at both ends). That is
how a mixed session (controller/entanglement_provision.py) relays: its QKD segments are PHYS hops, its
repeater segments key-link hops, and nothing here tells them apart: the drawing end (lower qkdn_id),
the journal, reserved pads, accounting and aborts are the same. The repeaters inside a segment are no
nodes of the VIRT link and never see a hop. Of several direct links to the next node, a relay takes
the lowest qkdl_id among those its INTERNAL applications for the VIRT link name, the master the lowest
(:meth:`agent.kme.authz.Authorisation.hop_to`).

Authorisation: a node takes a hop from node n only if it holds the VIRT link enabled with
``virt_prev_hop`` n, over an enabled hop link to n, and either (a relay) the INTERNAL application
the controller configured for that VIRT link on that hop link towards n
(:meth:`agent.kme.authz.Authorisation.relay_grant`), or (the far end) a CLIENT application of the SAE
pair backed by the VIRT link. A relay forwards only over a hop link for which it holds the INTERNAL
application towards the next node. Anything else is refused (401, ``unauthorised``).

Several ``virt_next_hop`` entries: the 015 model defines the leaf-list as the next hop(s) "for multicast
over shared sub-paths", i.e. the branches of a multicast tree, not a sequence of later hops. The KME
delivers to one slave SAE per request (``max_SAE_ID_count`` 0), and a VIRT link names one far end
(``qkdl_remote``), so relaying a unicast key down one branch of a multicast tree would be a guess:
a node whose VIRT link lists several next hops refuses the relay (503, reason ``multicast``, naming
them), at the master and at relays alike; it never silently uses the first.

Ops (``qkdl_id`` is the hop's link, PHYS or key link, ``virt_qkdl_id`` the VIRT link):

``reserve`` ``{op, request_id, qkdl_id, virt_qkdl_id, master_SAE_ID, slave_SAE_ID, size, number}``
    -> 200 ``{"ranges": [...], "digest": <hop digest>}``.
``relay`` ``{op, request_id, qkdl_id, virt_qkdl_id, master_SAE_ID, slave_SAE_ID, size, number, ranges,
digest, e2e_digest, reserved, ciphertext, budget_ms}`` -> 200 ``{"stored": n, "hops": h}`` once the far
end keeps the keys (``h``: hops from the sender to the far end). Errors carry a reason: ``divergence``
(the pads of the incoming hop differ), ``e2e-divergence`` (the relayed key differs from the one drawn),
``relay`` (a hop further on failed; the message says which and why), ``budget``, ``multicast``,
``conflict``, ``unauthorised``, ``no-key``, ``unavailable``.

Timeouts, staggered along the path
----------------------------------
Let T be ``kme.peer_timeout_s`` (the time one exchange on one hop may take, including the receiver's
own key store work and its wait for blocks still in flight, at most T/2) and H the path's length in
hops. The master waits at most ``2 * T * H`` for the whole chain. A ``relay`` op carries the time its
sender will wait for the answer, ``budget_ms`` = b. Its receiver must answer within ``b - T`` (T is
left for the answer's way back), spends at most T of that on its own ``reserve`` round trip, and gives
the next hop what is left. So the budget shrinks by at most 2T per hop: the receiver at position j
(1..H) gets at least ``2 * T * (H - j) + T``, the far end at least T, and every node gives up at least
T after the node downstream of it would have answered. An upstream hop therefore never gives up before
its downstream hop could have answered. A relay left with less than T for its next hop refuses
(``budget``) instead of sending. The master learns H from the answers (``hops``) per VIRT link; before
the first answer it assumes :data:`MAX_RELAY_HOPS`.

Failure, along the whole path
-----------------------------
Every failure ends with each node of the path having recorded as discarded (accounting consumer
``kme:<request_id>``) exactly the hop keys it consumed for the request, the far end holding no key, and
the master's SAE getting 503 with a message that names the hop and the cause:

* an error answered on a hop travels back hop by hop: each node discards the hop keys it took (and uses
  up as discarded the incoming ranges still free), journals an ``abort`` for its outgoing hop when it
  took a key there (idempotent, so both ends of the hop end up identical whatever the peer had done), and
  answers an error that names where the failure happened;
* a hop that gets no answer in time (node down, hung, partitioned) journals an ``abort`` for that hop;
  the abort loop (agent/kme/server.py) retries it until the peer answers, from the journal on disk, so it
  survives restarts. A node that gets an abort for its incoming hop discards what it took for the
  request on every link, erases kept keys and reserved pads, remembers the request as aborted (a
  ``relay`` that is still on its way, or a forwarding still in progress, then fails), and journals an
  abort for its own outgoing hop (:meth:`agent.kme.store.KmeStore.abort_here_op`): the abort goes on
  down to the far end, which erases the keys it kept.

Divergence (the two ends of a hop hold different bits, or a relay garbled the key) is logged and raised
as a CRITICAL 015 ``alarm`` by the node that detects it (both ends of a divergent hop; the node whose
end-to-end digest check fails), exactly like a direct link's.

Housekeeping (:meth:`Relayer.housekeeping`, once a second): pads whose ``relay`` op did not come within
:data:`RESERVE_TTL_S` are erased and their bits recorded as discarded; keys waiting for a slave whose
CLIENT application left the running configuration are erased and recorded as discarded, and such
pairs' stale journal entries closed (:meth:`agent.kme.store.KmeStore.purge`).

Key material (``K``, pads, ciphertexts) is never logged. :attr:`Relayer.fault` is a test-only hook
(a faulty relay); it is never set outside tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.keystore import KeyRange, KeyStoreBatch, RangeConflictError
from agent.kme.authz import Authorisation, LinkInfo
from agent.kme.etsi014 import KmeError
from agent.kme.peer import (
    PeerCallError,
    _draw_fields,
    _fields,
    _int,
    _malformed,
    parse_draw_answer,
    parse_ranges,
    peer_error,
)
from agent.kme.store import DivergenceError, _discard_free, _keep, _not_aborted, digest, split_keys, tag
from qsdn.errors import KeyStoreError

if TYPE_CHECKING:
    from agent.config import KmePeerConfig
    from agent.kme.server import KmeServer

__all__ = [
    "MAX_RELAY_HOPS",
    "RESERVE_TTL_S",
    "RelayMsg",
    "Relayer",
    "ReserveMsg",
    "TokenBucket",
    "parse_relay_op",
]

log = logging.getLogger(__name__)

RELAY_OPS = ("reserve", "relay")
#: A pad reserved for a relay op that never came is erased after this long (its bits accounted as
#: discarded).
RESERVE_TTL_S = 60.0
#: The path length the master assumes for a VIRT link before its first answer (see the module docstring).
MAX_RELAY_HOPS = 8
#: How often the housekeeping runs.
HOUSEKEEPING_S = 1.0
_STATUS_PREFIX = re.compile(r"^\d{3}: ")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _refusal(status: int, reason: str, message: str) -> KmeError:
    return peer_error(status, reason, message)


@dataclass(frozen=True)
class ReserveMsg:
    source_qkdn_id: str
    request_id: str
    qkdl_id: str
    virt_qkdl_id: str
    master: str
    slave: str
    size: int
    number: int

    op = "reserve"

    def body(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "request_id": self.request_id,
            "qkdl_id": self.qkdl_id,
            "virt_qkdl_id": self.virt_qkdl_id,
            "master_SAE_ID": self.master,
            "slave_SAE_ID": self.slave,
            "size": self.size,
            "number": self.number,
        }


@dataclass(frozen=True)
class RelayMsg(ReserveMsg):
    ranges: tuple[KeyRange, ...]
    digest: str
    e2e_digest: str
    reserved: bool
    ciphertext: bytes
    budget_ms: int

    op = "relay"

    def body(self) -> dict[str, Any]:
        out = super().body()
        out.update(
            ranges=[[r.block_id, r.offset_bits, r.nbits] for r in self.ranges],
            digest=self.digest,
            e2e_digest=self.e2e_digest,
            reserved=self.reserved,
            ciphertext=base64.b64encode(self.ciphertext).decode(),
            budget_ms=self.budget_ms,
        )
        return out


def _hex64(raw: dict[str, Any], name: str) -> str:
    v = raw.get(name)
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise _malformed(f"{name} must be 64 lower-case hex digits (SHA-256)")
    return v


def parse_relay_op(raw: dict[str, Any], source: str, *, max_keys: int, max_size: int) -> ReserveMsg:
    kind = raw.get("op")
    common = ("request_id", "qkdl_id", "virt_qkdl_id", "master_SAE_ID", "slave_SAE_ID", "size", "number")
    virt = raw.get("virt_qkdl_id")
    if not isinstance(virt, str) or not 0 < len(virt) <= 256:
        raise _malformed("virt_qkdl_id must be a non-empty string")
    if kind == "reserve":
        _fields(raw, common)
        f = _draw_fields({k: v for k, v in raw.items() if k != "virt_qkdl_id"}, source, max_keys, max_size)
        return ReserveMsg(virt_qkdl_id=virt, **f)
    _fields(raw, (*common, "ranges", "digest", "e2e_digest", "reserved", "ciphertext", "budget_ms"))
    f = _draw_fields(
        {k: v for k, v in raw.items() if k in common and k != "virt_qkdl_id"}, source, max_keys, max_size
    )
    if not isinstance(raw.get("reserved"), bool):
        raise _malformed("reserved must be a boolean")
    try:
        ct = base64.b64decode(str(raw.get("ciphertext", "")), validate=True)
    except (binascii.Error, ValueError):
        raise _malformed("ciphertext must be base64") from None
    if len(ct) * 8 != f["size"] * f["number"]:
        raise _malformed("ciphertext must hold size * number bits")
    return RelayMsg(
        virt_qkdl_id=virt,
        ranges=parse_ranges(raw.get("ranges")),
        digest=_hex64(raw, "digest"),
        e2e_digest=_hex64(raw, "e2e_digest"),
        reserved=raw["reserved"],
        ciphertext=ct,
        budget_ms=_int(raw, "budget_ms", 1, 86_400_000),
        **f,
    )


class TokenBucket:
    """``rate`` bits per second, ``burst`` bits of burst (default: one second's)."""

    def __init__(self, rate: int, burst: int | None = None) -> None:
        self.rate = rate
        self.burst = max(rate, burst or 0)
        self.tokens = float(self.burst)
        self.at = time.monotonic()

    def take(self, bits: int) -> bool:
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if bits > self.tokens:
            return False
        self.tokens -= bits
        return True


def _multicast(virt: LinkInfo) -> KmeError | None:
    if len(virt.virt_next_hops) <= 1:
        return None
    return _refusal(
        503,
        "multicast",
        f"VIRT link {virt.qkdl_id} branches here (virt_next_hop lists {len(virt.virt_next_hops)} nodes:"
        f" {', '.join(virt.virt_next_hops)}): a multicast tree, which this KME does not relay",
    )


class Relayer:
    """The relay logic of one KME (see the module docstring)."""

    def __init__(self, kme: KmeServer) -> None:
        self.kme = kme
        self._buckets: dict[str, TokenBucket] = {}
        #: hops of each VIRT link's path, learnt from the answers (the master's node)
        self._hops: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._seen_running: str | None = None
        self.relayed = 0
        self.failed = 0
        self.purged_keys = 0
        #: Test-only hook: a faulty relay. Called with (request_id, key) after this relay recovered and
        #: checked the key and before it forwards it; what it returns is forwarded. Never set in production.
        self.fault: Callable[[str, bytes], Awaitable[bytes]] | None = None
        kme.store.link_peer = self._link_peer

    @property
    def _t(self) -> float:
        return self.kme.config.peer_timeout_s

    def _link_peer(self, qkdl_id: str) -> str | None:
        link = self.kme._authz().links.get(qkdl_id)
        return link.remote_qkdn_id if link is not None and link.direct else None

    # --- housekeeping -----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._housekeeping_loop(), name="kme-relay")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _housekeeping_loop(self) -> None:
        while True:
            try:
                await self.housekeeping()
            except (KeyStoreError, KmeError) as exc:
                log.warning("KME %s: housekeeping failed: %s", self.kme.config.kme_id, exc)
            await asyncio.sleep(HOUSEKEEPING_S)

    async def housekeeping(self, *, pad_ttl_s: float = RESERVE_TTL_S) -> None:
        """Expire reserved pads older than ``pad_ttl_s``; when the running configuration changed, purge
        the keys (and stale journal entries) of SAE pairs that lost their CLIENT application."""
        kme = self.kme
        bits = await kme.store.expire_pads(pad_ttl_s)
        if bits:
            log.warning(
                "KME %s: relay pads never used expired; %d bits recorded as discarded",
                kme.config.kme_id,
                bits,
            )
        running = kme._running()
        if running is self._seen_running:
            return
        a = kme._authz()
        # a request can be in flight for at most the master's longest wait; older pending ones are stale
        stale_before = time.time() - 2 * self._t * MAX_RELAY_HOPS - self._t
        erased, bits = await kme.store.purge(lambda m, s: bool(a.apps(m, s)), stale_before)
        self._seen_running = running
        if erased or bits:
            self.purged_keys += erased
            log.warning(
                "KME %s: %d key(s) waiting for slaves whose application was removed erased;"
                " %d bits recorded as discarded",
                kme.config.kme_id,
                erased,
                bits,
            )
            kme._wake_aborts()

    # --- the master's node ----------------------------------------------------------------------
    def status(self, a: Authorisation, virt: LinkInfo) -> tuple[str, int]:
        """The target KME (the far end's node id: its KME is not a peer of this one) and the key the
        first hop holds, for ``status``."""
        target = virt.remote_qkdn_id if virt.local_qkdn_id == self.kme.node_id else virt.local_qkdn_id
        link = a.hop_to(virt.virt_next_hop) if virt.virt_next_hop else None
        return target or virt.qkdl_id, self.kme.keystore.stored_bits(link.qkdl_id) if link else 0

    async def enc_keys(
        self, virt: LinkInfo, master: str, slave: str, size: int, count: int, rid: str
    ) -> list[bytes]:
        kme = self.kme
        if virt.local_qkdn_id not in (None, kme.node_id) or virt.virt_prev_hop is not None:
            raise KmeError(503, f"VIRT link {virt.qkdl_id} does not start at this node")
        if virt.virt_next_hop is None:
            raise KmeError(503, f"VIRT link {virt.qkdl_id} has no virt_next_hop here")
        branch = _multicast(virt)
        if branch is not None:
            raise KmeError(503, branch.message)
        rate = virt.virt_bandwidth
        if rate:
            bucket = self._buckets.get(virt.qkdl_id)
            if bucket is None or bucket.rate != rate:
                bucket = self._buckets[virt.qkdl_id] = TokenBucket(rate, kme.config.max_key_size)
            if not bucket.take(size * count):
                raise KmeError(
                    503,
                    f"keys not ready: relay capacity of VIRT link {virt.qkdl_id} exceeded"
                    f" (virt_bandwidth {rate} bit/s)",
                )
        key = secrets.token_bytes(size * count // 8)
        e2e = digest(rid, virt.qkdl_id, size, count, key)
        msg = ReserveMsg(kme.node_id, rid, "", virt.qkdl_id, master, slave, size, count)
        hops = self._hops.get(virt.qkdl_id, MAX_RELAY_HOPS)
        deadline = asyncio.get_running_loop().time() + 2 * self._t * hops
        try:
            self._hops[virt.qkdl_id] = await self._forward(msg, virt.virt_next_hop, key, e2e, deadline)
        except KmeError as exc:
            raise KmeError(503, exc.message) from None
        self.relayed += 1
        return split_keys(key, size, count)

    # --- one hop, as sender -----------------------------------------------------------------------
    async def _call(self, peer: KmePeerConfig, msg: ReserveMsg, timeout_s: float) -> dict[str, Any]:
        channel = self.kme._peer
        if channel is None:
            raise PeerCallError(peer, None, "unavailable", "the KME is stopping")
        return await channel.send(peer, msg, timeout_s=timeout_s)

    async def _forward(self, base: ReserveMsg, next_hop: str, key: bytes, e2e: str, deadline: float) -> int:
        """Pad ``key`` with the hop key to ``next_hop`` and send it, answering by ``deadline`` (loop
        time). Returns the hops from here to the far end; raises KmeError (503, reason ``relay``, a
        message naming the hop and the cause) on failure, with this node's outgoing hop key recorded as
        discarded and, when one was taken, an abort for the hop journalled."""
        kme = self.kme
        loop = asyncio.get_running_loop()
        a = kme._authz()
        v = base.virt_qkdl_id
        me = kme.node_id
        link = a.hop_to(next_hop, v if base.qkdl_id else None)
        peer = kme._peers_by_id.get(next_hop)
        if link is None or peer is None:
            raise _refusal(
                503,
                "relay",
                f"trusted relay over VIRT link {v} failed at node {me}: no enabled PHYS link (or entanglement"
                f" key link) or KME configured towards the next node {next_hop}",
            )
        hop = link.qkdl_id
        where = f"the hop from node {me} to node {next_hop} (link {hop})"
        if base.qkdl_id and a.relay_grant(v, hop, next_hop) is None:
            raise _refusal(
                503,
                "relay",
                f"trusted relay over VIRT link {v} refused at node {me}: no INTERNAL application here"
                f" reserves relay capacity on {where}",
            )
        rid, size, count = base.request_id, base.size, base.number
        if deadline - loop.time() < self._t:
            # not even one hop's time left: refuse before taking any key for the hop
            self.failed += 1
            raise _refusal(
                503,
                "relay",
                f"trusted relay over VIRT link {v} failed at node {me}: less than one hop's {self._t} s left"
                " for the rest of the path (a hop before was too slow, or the path is longer than the"
                " master assumed)",
            )
        ranges: list[KeyRange]
        try:
            if me < next_hop:
                ranges, pad = await kme.store.draw_for_delivery(
                    request_id=rid,
                    qkdl_id=hop,
                    peer=next_hop,
                    master=base.master,
                    slave=base.slave,
                    size=size,
                    count=count,
                )
                reserved = False
            else:
                await kme.store.journal_draw(
                    request_id=rid,
                    qkdl_id=hop,
                    peer=next_hop,
                    master=base.master,
                    slave=base.slave,
                    size=size,
                    count=count,
                )
                res = ReserveMsg(me, rid, hop, v, base.master, base.slave, size, count)
                try:
                    answer = await self._call(peer, res, max(0.001, min(self._t, deadline - loop.time())))
                    got, hop_digest = parse_draw_answer(answer)
                except PeerCallError as exc:
                    # a refused reserve took nothing at the peer; an unanswered one may have
                    raise await self._hop_failed(base, hop, next_hop, exc, abort=exc.status is None) from None
                except KmeError as exc:
                    raise await self._hop_failed(
                        base, hop, next_hop, PeerCallError(peer, 200, "malformed", exc.message), abort=True
                    ) from None
                ranges = list(got)
                try:
                    pad = b"".join(
                        await kme._apply(
                            request_id=rid,
                            qkdl_id=hop,
                            ranges=ranges,
                            size=size,
                            count=count,
                            expect=hop_digest,
                            store_for=None,
                        )
                    )
                except (KeyStoreError, KmeError) as exc:
                    await kme.store.discard_ranges(request_id=rid, qkdl_id=hop, ranges=ranges)
                    diverged = isinstance(exc, DivergenceError)
                    if diverged:
                        kme._divergence(hop, rid, str(exc))
                    await kme.store.fail(rid, hop, "relay: hop key unusable", ranges=ranges)
                    kme._wake_aborts()
                    self.failed += 1
                    if diverged:
                        raise self._divergence_error(v, hop, me, next_hop) from None
                    detail = exc.message if isinstance(exc, KmeError) else exc.first.message
                    raise _refusal(
                        503, "relay", f"trusted relay over VIRT link {v} failed on {where}: {detail}"
                    ) from None
                reserved = True
        except KeyStoreError as exc:
            self.failed += 1
            if isinstance(exc, RangeConflictError):
                detail = "the request was aborted meanwhile"
            elif "not enough key" in str(exc):
                detail = f"keys not ready: {exc.first.message}"
            else:
                detail = exc.first.message
            raise _refusal(
                503, "relay", f"trusted relay over VIRT link {v} failed on {where}: {detail}"
            ) from None
        budget = deadline - loop.time()
        if budget < self._t:
            await kme.store.fail(rid, hop, "relay: time budget exhausted", ranges=ranges)
            kme._wake_aborts()
            self.failed += 1
            raise _refusal(
                503,
                "relay",
                f"trusted relay over VIRT link {v} failed at node {me}: {budget:.1f} s left for the rest of"
                f" the path, less than one hop's {self._t} s (the path is longer than the master assumed)",
            )
        msg = RelayMsg(
            me,
            rid,
            hop,
            v,
            base.master,
            base.slave,
            size,
            count,
            ranges=tuple(ranges),
            digest=digest(rid, hop, size, count, pad),
            e2e_digest=e2e,
            reserved=reserved,
            ciphertext=_xor(key, pad),
            budget_ms=max(1, int(budget * 1000)),
        )
        try:
            answer = await self._call(peer, msg, budget)
        except PeerCallError as exc:
            # whatever the peer did, an abort makes both ends of the hop identical (idempotent)
            raise await self._hop_failed(base, hop, next_hop, exc, abort=True, ranges=ranges) from None
        if not await kme.store.finish(rid):
            # an abort came from upstream while the rest of the path worked: it goes on downstream
            kme._wake_aborts()
            self.failed += 1
            raise _refusal(
                503, "relay", f"trusted relay over VIRT link {v}: request {rid} was aborted at node {me}"
            )
        hops = answer.get("hops")
        return hops if isinstance(hops, int) and not isinstance(hops, bool) and 0 < hops < 1000 else 1

    def _divergence_error(self, v: str, hop: str, n: str, m: str) -> KmeError:
        return _refusal(
            503,
            "relay",
            f"key divergence detected on link {hop} between nodes {n} and {m} (trusted relay over VIRT link"
            f" {v}): the two ends hold different key material; the keys were discarded along the path and"
            " the operator alerted",
        )

    async def _hop_failed(
        self,
        base: ReserveMsg,
        hop: str,
        next_hop: str,
        exc: PeerCallError,
        *,
        abort: bool,
        ranges: list[KeyRange] | None = None,
    ) -> KmeError:
        """Record a hop that failed with the next node; the error to raise (reason ``relay``)."""
        kme = self.kme
        self.failed += 1
        kme.stats.failed_requests += 1
        rid, v, me = base.request_id, base.virt_qkdl_id, kme.node_id
        bits = await kme.store.fail(rid, hop, exc.message, abort_peer=abort, ranges=ranges)
        if abort:
            kme._wake_aborts()
        detail = _STATUS_PREFIX.sub("", exc.message)
        log.warning(
            "KME %s: relay of request %s over VIRT link %s: hop to node %s (link %s) failed (%s: %s);"
            " %d bits discarded here",
            kme.config.kme_id,
            rid,
            v,
            next_hop,
            hop,
            exc.reason,
            detail,
            bits,
        )
        if exc.reason in ("relay", "e2e-divergence"):
            return _refusal(503, "relay", detail)
        if exc.reason == "divergence":
            kme._divergence(hop, rid, detail)
            return self._divergence_error(v, hop, me, next_hop)
        if exc.status is None:
            return _refusal(
                503,
                "relay",
                f"trusted relay over VIRT link {v} failed: node {next_hop}'s KME did not answer"
                f" ({exc.reason}) on the hop from node {me} (link {hop});"
                " the keys were discarded along the path",
            )
        return _refusal(
            503,
            "relay",
            f"trusted relay over VIRT link {v} failed: node {next_hop}'s KME refused the hop from node {me}"
            f" (link {hop}): {exc.reason}: {detail}",
        )

    # --- the receiving side -----------------------------------------------------------------------
    def check(self, msg: ReserveMsg) -> None:
        """401 unless this node is on ``msg.virt_qkdl_id`` right after the sender, over ``qkdl_id``, and
        the controller configured it to relay (INTERNAL application) or to end (CLIENT application) it."""
        a = self.kme._authz()
        virt = a.links.get(msg.virt_qkdl_id)
        hop = a.links.get(msg.qkdl_id)
        src = msg.source_qkdn_id
        why = None
        if virt is None or virt.kind != "VIRT" or not virt.enabled:
            why = f"VIRT link {msg.virt_qkdl_id} is not configured (enabled) here"
        elif virt.virt_prev_hop != src:
            why = f"node {src} is not the previous hop of VIRT link {msg.virt_qkdl_id} here"
        elif hop is None or not hop.direct or not hop.enabled or hop.remote_qkdn_id != src:
            why = f"link {msg.qkdl_id} is not an enabled PHYS link (or entanglement key link) to node {src}"
        elif virt.virt_next_hops:
            branch = _multicast(virt)
            if branch is not None:
                raise branch
            if a.relay_grant(msg.virt_qkdl_id, msg.qkdl_id, src) is None:
                why = (
                    f"no INTERNAL application here reserves relay capacity of VIRT link {msg.virt_qkdl_id}"
                    f" on link {msg.qkdl_id} with node {src}"
                )
        elif not any(msg.virt_qkdl_id in app.backing for app in a.apps(msg.master, msg.slave)):
            why = f"no CLIENT application here for {msg.master} -> {msg.slave} over {msg.virt_qkdl_id}"
        if why is not None:
            raise KmeError(401, why, [{"reason": "unauthorised"}])

    async def serve(self, msg: ReserveMsg) -> dict[str, Any]:
        """The result payload of a reserve or relay op (raises KmeError)."""
        self.check(msg)
        if not isinstance(msg, RelayMsg):
            return await self._reserve(msg)
        return await self._relay(msg)

    async def _reserve(self, msg: ReserveMsg) -> dict[str, Any]:
        kme = self.kme
        if kme.node_id > msg.source_qkdn_id:
            raise KmeError(400, f"this end does not draw on {msg.qkdl_id}", [{"reason": "role"}])
        try:
            ranges, pad = await kme.store.reserve_pad(
                request_id=msg.request_id,
                qkdl_id=msg.qkdl_id,
                peer=msg.source_qkdn_id,
                bits=msg.size * msg.number,
            )
        except RangeConflictError as exc:
            raise KmeError(409, exc.first.message, [{"reason": "conflict"}]) from None
        except KeyStoreError as exc:
            reason = "no-key" if "not enough key" in str(exc) else "unavailable"
            raise KmeError(503, exc.first.message, [{"reason": reason}]) from None
        hop_digest = digest(msg.request_id, msg.qkdl_id, msg.size, msg.number, pad)
        return {"ranges": [[r.block_id, r.offset_bits, r.nbits] for r in ranges], "digest": hop_digest}

    async def _relay(self, msg: RelayMsg) -> dict[str, Any]:
        kme = self.kme
        loop = asyncio.get_running_loop()
        # answer within the sender's budget, keeping one hop's time for the answer (module docstring)
        deadline = loop.time() + msg.budget_ms / 1000 - self._t
        rid, hop, v, me = msg.request_id, msg.qkdl_id, msg.virt_qkdl_id, kme.node_id
        virt = kme._authz().links[v]
        try:
            if msg.reserved:
                pad = await kme.store.take_pad(rid, hop, msg.source_qkdn_id)
                if pad is None:
                    raise KmeError(409, "no pad reserved here for this request", [{"reason": "conflict"}])
                if digest(rid, hop, msg.size, msg.number, pad) != msg.digest:
                    raise DivergenceError(
                        f"link {hop}: request {rid}: the reserved pad differs between the ends"
                    )
            else:
                pad = b"".join(
                    await kme._apply(
                        request_id=rid,
                        qkdl_id=hop,
                        ranges=msg.ranges,
                        size=msg.size,
                        count=msg.number,
                        expect=msg.digest,
                        store_for=None,
                    )
                )
            key = _xor(msg.ciphertext, pad)
            if digest(rid, v, msg.size, msg.number, key) != msg.e2e_digest:
                text = (
                    f"key divergence detected on VIRT link {v}: the key relayed to node {me} differs from the"
                    " key drawn at the master's node (end-to-end digest); the keys were discarded along the"
                    " path and the operator alerted"
                )
                kme._divergence(v, rid, "end-to-end digest mismatch of a relayed key")
                raise KmeError(409, text, [{"reason": "e2e-divergence"}])
            if virt.virt_next_hop is None:
                keys = split_keys(key, msg.size, msg.number)

                def keep(b: KeyStoreBatch) -> None:
                    _not_aborted(b, rid)
                    _keep(
                        b,
                        request_id=rid,
                        qkdl_id=hop,
                        master=msg.master,
                        slave=msg.slave,
                        size=msg.size,
                        keys=keys,
                        max_waiting=kme.config.max_key_count,
                    )

                await kme.store.call(keep, "keep relayed keys")
                kme.stats.keys_kept_for_slaves += msg.number
                hops = 1
            else:
                if self.fault is not None:
                    key = await self.fault(rid, key)
                hops = await self._forward(msg, virt.virt_next_hop, key, msg.e2e_digest, deadline) + 1
            self.relayed += 1
            return {"stored": msg.number, "hops": hops}
        except (KmeError, KeyStoreError) as exc:
            self.failed += 1
            ranges = msg.ranges

            def discard(b: KeyStoreBatch) -> int:
                b.execute("DELETE FROM kme_pads WHERE request_id = ? AND qkdl_id = ?", (rid, hop))
                return b.discard_consumed(hop, tag(rid)) + _discard_free(b, hop, tag(rid), ranges)

            await kme.store.call(discard, "discard a failed relay's hop key")
            if isinstance(exc, KmeError):
                raise
            if isinstance(exc, DivergenceError):
                kme._divergence(hop, rid, str(exc))
                raise KmeError(409, f"hop key divergence on link {hop}", [{"reason": "divergence"}]) from None
            if isinstance(exc, RangeConflictError):
                raise KmeError(409, exc.first.message, [{"reason": "conflict"}]) from None
            raise KmeError(503, f"relay failed: {exc.first.message}", [{"reason": "unavailable"}]) from None
