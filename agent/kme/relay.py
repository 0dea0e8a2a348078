"""Trusted key relay over VIRT links: ``reserve`` and ``relay`` ops on the KME-to-KME channel.

A CLIENT application backed by a VIRT link X-Y (controller/provision.py: the VIRT link is configured on
every node of the path, ``virt_next_hop`` naming the next node towards Y) gets its keys like this:

1. The master's KME at X checks the VIRT link's rate (``virt_bandwidth`` bit/s, a token bucket with one
   second of burst; over it: 503), draws a fresh random key ``K`` (:func:`secrets.token_bytes`) of
   ``size * number`` bits, assigns the key_IDs and computes the end-to-end digest
   ``digest(request_id, virt_qkdl_id, size, number, K)`` (:func:`agent.kme.store.digest`).
2. For each hop (n, m) along ``virt_next_hop`` the sender n takes a pad ``P`` of the same length from
   the hop's PHYS link, exactly once at both ends, with the mechanism of direct links: if n is the
   link's drawing end (lower qkdn_id) it ``consume``\\ s ``P`` (journalled as a ``deliver`` request);
   otherwise it sends ``reserve`` and m draws ``P`` (kept in memory until the ``relay`` op comes), and
   n ``consume_ranges`` the ranges m names, checking the hop digest (journalled as a ``draw`` request).
3. n sends ``relay`` with ``K xor P`` (base64), the hop ranges, the hop digest, the end-to-end digest
   and the SAEs. m takes ``P`` (``consume_ranges`` and hop digest check, or its reserved pad), recovers
   ``K``, and either forwards it over its own next hop (re-padded) and answers when that hop answered,
   or, at Y, checks the end-to-end digest and keeps the keys for the slave SAE under the same key_IDs
   (stored as kept for the last PHYS hop, so that an ``abort`` over that hop erases them).
4. Only when the whole chain answered 200 does X hand the keys to the master SAE.

Ops (``qkdl_id`` is the hop's PHYS link, ``virt_qkdl_id`` the VIRT link):

``reserve`` ``{op, request_id, qkdl_id, virt_qkdl_id, master_SAE_ID, slave_SAE_ID, size, number}``
    -> 200 ``{"ranges": [...], "digest": <hop digest>}``.
``relay`` ``{op, request_id, qkdl_id, virt_qkdl_id, master_SAE_ID, slave_SAE_ID, size, number, ranges,
digest, e2e_digest, reserved, ciphertext}`` -> 200 ``{"stored": n}`` once the far end keeps the keys.

Failure: any node that fails records the hop key it consumed for the request (``kme:<request_id>``) on
both of its links as *discarded*, uses up as discarded the incoming ranges still free, and answers an
error; each sender before it does the same, so the master's SAE gets 503 and no end holds a key. When
a hop gets no answer at all, its sender journals an ``abort`` for that hop (the existing abort loop
retries it until the peer answers; the peer then erases and discards its part of that hop). Known
limit: such an abort is not propagated beyond that one hop.

Key material (``K``, pads, ciphertexts) is never logged.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.keystore import KeyRange, KeyStoreBatch
from agent.kme.authz import Authorisation, LinkInfo
from agent.kme.etsi014 import KmeError
from agent.kme.peer import PeerCallError, _draw_fields, _fields, _malformed, parse_draw_answer, parse_ranges
from agent.kme.store import DivergenceError, _discard_free, _keep, digest, split_keys, tag
from qsdn.errors import KeyStoreError

if TYPE_CHECKING:
    from agent.kme.server import KmeServer

__all__ = ["RelayMsg", "Relayer", "ReserveMsg", "TokenBucket", "parse_relay_op"]

RELAY_OPS = ("reserve", "relay")
#: A pad reserved for a relay op that never came is forgotten after this long (its bits stay accounted).
RESERVE_TTL_S = 60.0


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


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

    op = "relay"

    def body(self) -> dict[str, Any]:
        out = super().body()
        out.update(
            ranges=[[r.block_id, r.offset_bits, r.nbits] for r in self.ranges],
            digest=self.digest,
            e2e_digest=self.e2e_digest,
            reserved=self.reserved,
            ciphertext=base64.b64encode(self.ciphertext).decode(),
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
    _fields(raw, (*common, "ranges", "digest", "e2e_digest", "reserved", "ciphertext"))
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
        **f,
    )


class TokenBucket:
    """``rate`` bits per second, one second of burst."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.at = time.monotonic()

    def take(self, bits: int) -> bool:
        now = time.monotonic()
        self.tokens = min(float(self.rate), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if bits > self.tokens:
            return False
        self.tokens -= bits
        return True


class Relayer:
    """The relay logic of one KME (see the module docstring)."""

    def __init__(self, kme: KmeServer) -> None:
        self.kme = kme
        self._buckets: dict[str, TokenBucket] = {}
        self._reserved: dict[tuple[str, str], tuple[float, bytes]] = {}
        self.relayed = 0
        self.failed = 0

    # --- the master's node ----------------------------------------------------------------------
    def status(self, a: Authorisation, virt: LinkInfo) -> tuple[str, int]:
        """The target KME (the far end's node id: its KME is not a peer of this one) and the key the
        first hop holds, for ``status``."""
        target = virt.remote_qkdn_id if virt.local_qkdn_id == self.kme.node_id else virt.local_qkdn_id
        link = a.phys_to(virt.virt_next_hop) if virt.virt_next_hop else None
        return target or virt.qkdl_id, self.kme.keystore.stored_bits(link.qkdl_id) if link else 0

    async def enc_keys(
        self, virt: LinkInfo, master: str, slave: str, size: int, count: int, rid: str
    ) -> list[bytes]:
        kme = self.kme
        if virt.local_qkdn_id not in (None, kme.node_id) or virt.virt_prev_hop is not None:
            raise KmeError(503, f"VIRT link {virt.qkdl_id} does not start at this node")
        if virt.virt_next_hop is None:
            raise KmeError(503, f"VIRT link {virt.qkdl_id} has no virt_next_hop here")
        rate = virt.virt_bandwidth
        if rate:
            bucket = self._buckets.get(virt.qkdl_id)
            if bucket is None or bucket.rate != rate:
                bucket = self._buckets[virt.qkdl_id] = TokenBucket(rate)
            if not bucket.take(size * count):
                raise KmeError(
                    503,
                    f"keys not ready: relay capacity of VIRT link {virt.qkdl_id} exceeded"
                    f" (virt_bandwidth {rate} bit/s)",
                )
        key = secrets.token_bytes(size * count // 8)
        e2e = digest(rid, virt.qkdl_id, size, count, key)
        msg = ReserveMsg(kme.node_id, rid, "", virt.qkdl_id, master, slave, size, count)
        await self._forward(msg, virt.virt_next_hop, key, e2e)
        self.relayed += 1
        return split_keys(key, size, count)

    # --- one hop, as sender -----------------------------------------------------------------------
    async def _forward(self, base: ReserveMsg, next_hop: str, key: bytes, e2e: str) -> None:
        """Pad ``key`` with the hop key to ``next_hop`` and send it; raises KmeError (503) on failure,
        with this node's outgoing hop key recorded as discarded."""
        kme = self.kme
        a = kme._authz()
        link = a.phys_to(next_hop)
        peer = kme._peers_by_id.get(next_hop)
        if link is None or peer is None:
            raise KmeError(503, f"relay: no enabled PHYS link or KME configured towards node {next_hop}")
        hop = link.qkdl_id
        rid, size, count = base.request_id, base.size, base.number
        ranges: list[KeyRange]
        try:
            if kme.node_id < next_hop:
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
                res = ReserveMsg(
                    kme.node_id, rid, hop, base.virt_qkdl_id, base.master, base.slave, size, count
                )
                try:
                    answer = await kme._send(peer, res)  # type: ignore[arg-type]
                    got, hop_digest = parse_draw_answer(answer)
                except PeerCallError as exc:
                    raise await kme._failed(rid, hop, exc, abort=exc.status is None) from None
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
                    if isinstance(exc, DivergenceError):
                        kme._divergence(hop, rid, str(exc))
                    await kme.store.fail(rid, hop, "relay: hop key unusable", ranges=ranges)
                    kme._wake_aborts()
                    raise KmeError(503, f"relay: the hop key on link {hop} cannot be used") from None
                reserved = True
        except KeyStoreError as exc:
            raise kme._no_key(exc, hop) from None
        msg = RelayMsg(
            kme.node_id,
            rid,
            hop,
            base.virt_qkdl_id,
            base.master,
            base.slave,
            size,
            count,
            ranges=tuple(ranges),
            digest=digest(rid, hop, size, count, pad),
            e2e_digest=e2e,
            reserved=reserved,
            ciphertext=_xor(key, pad),
        )
        try:
            await kme._send(peer, msg)  # type: ignore[arg-type]
        except PeerCallError as exc:
            self.failed += 1
            raise await kme._failed(rid, hop, exc, abort=exc.status is None) from None
        await kme.store.finish(rid)

    # --- the receiving side -----------------------------------------------------------------------
    def check(self, msg: ReserveMsg) -> None:
        """401 unless this node is on ``msg.virt_qkdl_id`` right after the sender, over ``qkdl_id``."""
        a = self.kme._authz()
        virt = a.links.get(msg.virt_qkdl_id)
        hop = a.links.get(msg.qkdl_id)
        why = None
        if virt is None or virt.kind != "VIRT" or not virt.enabled:
            why = f"VIRT link {msg.virt_qkdl_id} is not configured (enabled) here"
        elif virt.virt_prev_hop != msg.source_qkdn_id:
            why = f"node {msg.source_qkdn_id} is not the previous hop of VIRT link {msg.virt_qkdl_id} here"
        elif hop is None or hop.kind != "PHYS" or not hop.enabled or hop.remote_qkdn_id != msg.source_qkdn_id:
            why = f"link {msg.qkdl_id} is not an enabled PHYS link to node {msg.source_qkdn_id}"
        elif virt.virt_next_hop is None and not any(
            msg.virt_qkdl_id in app.backing for app in a.apps(msg.master, msg.slave)
        ):
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
        bits = msg.size * msg.number

        def op(b: KeyStoreBatch) -> tuple[list[KeyRange], bytes]:
            got = b.consume(msg.qkdl_id, bits, tag(msg.request_id))
            return got.ranges, got.key

        try:
            ranges, pad = await kme.store.call(op, "reserve a relay pad")
        except KeyStoreError as exc:
            reason = "no-key" if "not enough key" in str(exc) else "unavailable"
            raise KmeError(503, exc.first.message, [{"reason": reason}]) from None
        now = time.monotonic()
        for k in [k for k, (t, _) in self._reserved.items() if now - t > RESERVE_TTL_S]:
            del self._reserved[k]
        self._reserved[(msg.request_id, msg.qkdl_id)] = (now, pad)
        hop_digest = digest(msg.request_id, msg.qkdl_id, msg.size, msg.number, pad)
        return {"ranges": [[r.block_id, r.offset_bits, r.nbits] for r in ranges], "digest": hop_digest}

    async def _relay(self, msg: RelayMsg) -> dict[str, Any]:
        kme = self.kme
        rid, hop = msg.request_id, msg.qkdl_id
        virt = kme._authz().links[msg.virt_qkdl_id]
        last = virt.virt_next_hop is None
        try:
            if msg.reserved:
                entry = self._reserved.pop((rid, hop), None)
                if entry is None:
                    raise KmeError(409, "no pad reserved here for this request", [{"reason": "conflict"}])
                pad = entry[1]
                if digest(rid, hop, msg.size, msg.number, pad) != msg.digest:
                    kme._divergence(hop, rid, "reserved pad differs")
                    raise KmeError(409, "hop key divergence", [{"reason": "divergence"}])
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
            if digest(rid, msg.virt_qkdl_id, msg.size, msg.number, key) != msg.e2e_digest:
                raise KmeError(409, "end-to-end digest mismatch", [{"reason": "divergence"}])
            if last:

                def keep(b: KeyStoreBatch) -> None:
                    _keep(
                        b,
                        request_id=rid,
                        qkdl_id=hop,
                        master=msg.master,
                        slave=msg.slave,
                        size=msg.size,
                        keys=split_keys(key, msg.size, msg.number),
                        max_waiting=kme.config.max_key_count,
                    )

                await kme.store.call(keep, "keep relayed keys")
                kme.stats.keys_kept_for_slaves += msg.number
            else:
                assert virt.virt_next_hop is not None
                await self._forward(msg, virt.virt_next_hop, key, msg.e2e_digest)
            self.relayed += 1
            return {"stored": msg.number}
        except (KmeError, KeyStoreError) as exc:
            self.failed += 1
            ranges = msg.ranges

            def discard(b: KeyStoreBatch) -> int:
                return b.discard_consumed(hop, tag(rid)) + _discard_free(b, hop, tag(rid), ranges)

            await kme.store.call(discard, "discard a failed relay's hop key")
            if isinstance(exc, KmeError):
                raise
            if isinstance(exc, DivergenceError):
                kme._divergence(hop, rid, str(exc))
                raise KmeError(409, "hop key divergence", [{"reason": "divergence"}]) from None
            raise KmeError(503, f"relay failed: {exc.first.message}", [{"reason": "unavailable"}]) from None
