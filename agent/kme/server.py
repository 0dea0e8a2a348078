"""The KME's HTTPS server: the ETSI GS QKD 014 API for SAEs, SKIP for encryptors, and the peer channel.

One aiohttp application on one mutual-TLS port (:func:`qsdn.pki.server_context`, TLS 1.2 or 1.3, a
client certificate from the network's CA required). The caller's identity is its certificate's
CommonName (:func:`qsdn.pki.sae_id_of`), never anything in the request. One error middleware renders
every failure as ETSI 014's ``{"message": ..., "details": [...]}``, or as SKIP's ``{"message": ...}`` on
the SKIP routes (:mod:`agent.kme.skip`, served at the root of the same port when ``kme.skip`` is on).
Both front ends get their keys from :meth:`KmeServer.new_keys` and :meth:`KmeServer.take_keys`.

Key flow for a direct (PHYS) link, master SAE M at this node asking for keys for slave S (see the
package docstring for the reasoning; VIRT links are served by :mod:`agent.kme.relay`):

* this node is the link's *drawing* end (the lower qkdn_id): consume ``number*size`` bits and journal
  the request (one transaction), send ``deliver`` with the ranges and a digest to the peer, which
  consumes exactly those ranges, checks the digest and keeps the keys for S; only then answer M.
* this node is the other end: journal the request, send ``draw``; the peer consumes, keeps the keys
  for S and answers with the ranges and digest; consume exactly those ranges here, check the digest,
  answer M.

Whatever fails after key was drawn (no answer, refusal, divergence), the request's link key is
recorded as discarded at this end, the SAE gets 503, and a background task tells the peer (``abort``,
retried until it answers) to erase its keys for the request and discard the same ranges, so the two
key stores stay identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent import notify
from agent.config import KmeConfig, KmePeerConfig
from agent.keystore import KeyRange, KeyStore, KeyStoreBatch, MissingBlockError, RangeConflictError
from agent.kme import authz as authz_mod
from agent.kme.authz import Authorisation as Authz
from agent.kme.entanglement_api import EntanglementApi, entanglement_api
from agent.kme.etsi014 import (
    KmeError,
    Limits,
    bad,
    key_container_json,
    key_ids,
    new_request_id,
    parse_dec_body,
    parse_dec_query,
    parse_enc_body,
    parse_enc_query,
    status_body,
)
from agent.kme.peer import (
    BATCH_PATH,
    AbortMsg,
    DeliverMsg,
    DrawMsg,
    PeerCallError,
    PeerChannel,
    PeerMsg,
    cert_name,
    failure,
    ok,
    parse_draw_answer,
    parse_envelope,
    parse_op,
    parse_ranges,
    peer_error,
)
from agent.kme.relay import RELAY_OPS, Relayer, parse_relay_op
from agent.kme.skip import ROUTE_PREFIX as SKIP_ROUTES
from agent.kme.skip import SkipFrontEnd
from agent.kme.skip import error_body as skip_error_body
from agent.kme.store import DivergenceError, JournalEntry, KmeStore, digest, split_keys
from qsdn.errors import KeyStoreError, QsdnError
from qsdn.pki import SAE_ID_RE, client_context, server_context

__all__ = ["KmeServer", "KmeStats"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
#: How long the non-drawing end waits for a block the drawing end already used (in flight on the
#: QKD link's own channel), at most; also bounded by half the peer timeout.
BLOCK_WAIT_S = 2.0
BLOCK_POLL_S = 0.02
ABORT_RETRY_S = 5.0


@dataclass
class KmeStats:
    keys_to_masters: int = 0
    keys_to_slaves: int = 0
    keys_kept_for_slaves: int = 0
    failed_requests: int = 0
    divergences: int = 0
    aborts_sent: int = 0
    aborts_received: int = 0


class KmeServer:
    """The node's KME. ``running`` returns the running configuration (015 XML) at the moment of the call."""

    def __init__(
        self,
        config: KmeConfig,
        *,
        node_id: str,
        running: Callable[[], str],
        keystore: KeyStore,
        bus: notify.NotificationBus | None = None,
        entanglement: object | None = None,
    ) -> None:
        self.config = config
        self.node_id = node_id.lower()
        self._running = running
        self.keystore = keystore
        self.bus = bus
        self.store = KmeStore(keystore.path, name=f"kme {config.kme_id}")
        self.limits = Limits(
            default_key_size=config.default_key_size,
            min_key_size=config.min_key_size,
            max_key_size=config.max_key_size,
            max_key_per_request=config.max_keys_per_request,
            max_key_count=config.max_key_count,
            max_sae_id_count=0,
        )
        self.stats = KmeStats()
        self.port: int | None = None
        self._peers_by_id = {p.qkdn_id: p for p in config.peers}
        self._runner: web.AppRunner | None = None
        self._peer: PeerChannel | None = None
        self._abort_task: asyncio.Task[None] | None = None
        self._abort_wakeup: asyncio.Event | None = None
        self._block_wait_s = min(BLOCK_WAIT_S, config.peer_timeout_s / 2)
        self.relay = Relayer(self)
        self.skip = SkipFrontEnd(self)
        #: entanglement delivery of ``pairs`` sessions (agent.kme.entanglement_api), with a driver that has it
        self.pairs: EntanglementApi | None = (
            entanglement_api(self, entanglement) if entanglement is not None else None
        )

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        server_ssl = server_context((cfg.cert, cfg.key), cfg.ca, require_client_cert=True)
        self._peer = PeerChannel(
            client_context(cfg.ca, (cfg.cert, cfg.key)), cfg.peer_timeout_s, cfg.peers, self.node_id
        )
        await self.store.start()
        pending = await self.store.recover()
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY_BYTES)
        keys = "/api/v1/keys"
        app.add_routes(
            [
                web.get(keys + "/{slave}/status", self._status, allow_head=False),
                web.get(keys + "/{slave}/enc_keys", self._enc_keys, allow_head=False),
                web.post(keys + "/{slave}/enc_keys", self._enc_keys),
                web.get(keys + "/{master}/dec_keys", self._dec_keys, allow_head=False),
                web.post(keys + "/{master}/dec_keys", self._dec_keys),
                web.post(BATCH_PATH, self._peer_batch),
            ]
        )
        if cfg.skip:
            app.add_routes(self.skip.routes())
        if self.pairs is not None:
            app.add_routes(self.pairs.routes())
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port, ssl_context=server_ssl, backlog=512)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            await self.store.close()
            raise
        self._runner = runner
        addrs = runner.addresses
        self.port = int(addrs[0][1]) if addrs else cfg.port
        self._abort_wakeup = asyncio.Event()
        self._abort_task = asyncio.get_running_loop().create_task(self._abort_loop(), name="kme-abort")
        self.relay.start()
        if self.pairs is not None:
            self.pairs.start()
        if pending:
            log.warning("KME %s: %d failed request(s) to abort at the peer", cfg.kme_id, len(pending))
        log.info(
            "KME %s: ETSI GS QKD 014%s over mutual TLS on %s:%s",
            cfg.kme_id,
            " and SKIP" if cfg.skip else "",
            cfg.host,
            self.port,
        )

    async def stop(self) -> None:
        """Stop serving (open requests get 2 s), stop the abort task, close the peer client and store."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self.pairs is not None:
            await self.pairs.stop()
        await self.relay.stop()
        task, self._abort_task = self._abort_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._peer is not None:
            await self._peer.close()
            self._peer = None
        await self.store.close()

    # --- errors and identity ----------------------------------------------------------------------
    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except KmeError as exc:
            level = logging.WARNING if exc.status >= 500 else logging.INFO
            log.log(
                level,
                "KME %s: %s %s -> %d: %s",
                self.config.kme_id,
                request.method,
                request.path,
                exc.status,
                exc.message,
            )
            route = request.match_info.route.name
            skip = route is not None and route.startswith(SKIP_ROUTES)
            return web.json_response(skip_error_body(exc) if skip else exc.body(), status=exc.status)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(
                {"message": f"the request body exceeds {MAX_BODY_BYTES} bytes"}, status=400
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response({"message": exc.reason}, status=exc.status, headers=_allow(exc))
        except Exception:
            log.exception("KME %s: internal error on %s %s", self.config.kme_id, request.method, request.path)
            return web.json_response({"message": "internal error of the KME; see its log"}, status=503)

    @staticmethod
    def identity(request: web.Request) -> str:
        """The CommonName of the caller's client certificate (401 without one)."""
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise KmeError(401, "a client certificate is required (mutual TLS)")
        try:
            return cert_name(der)
        except QsdnError as exc:
            raise KmeError(401, exc.first.message) from None
        except ValueError:
            raise KmeError(401, "the client certificate cannot be read") from None

    def _authz(self) -> Authz:
        return authz_mod.authorisation(self._running(), self.node_id)

    def authorise(self, caller: str, master: str, slave: str, role: str) -> Authz:
        """401 unless the running configuration lets ``caller`` act as ``role`` for master -> slave;
        the authorisation view it was judged on."""
        for name, what in ((master, "master_SAE_ID"), (slave, "slave_SAE_ID")):
            if not SAE_ID_RE.fullmatch(name):
                raise bad(f"{what} {name[:80]!r} is not a valid SAE ID", parameter=what)
        a = self._authz()
        if not a.apps(master, slave):
            kme = self.config.kme_id
            if role == "master":
                msg = f"SAE {caller} is not authorised to get keys for slave SAE {slave} at KME {kme}"
            else:
                msg = f"SAE {caller} is not authorised to get keys of master SAE {master} at KME {kme}"
            raise KmeError(401, msg)
        return a

    def _route(self, a: Authz, master: str, slave: str) -> tuple[authz_mod.Route, KmePeerConfig]:
        try:
            route = a.route(master, slave)
        except authz_mod.RouteError as exc:
            raise KmeError(503, f"keys for {master} -> {slave} cannot be served: {exc}") from None
        peer = self._peers_by_id.get(route.peer_qkdn_id)
        if peer is None:
            raise KmeError(
                503,
                f"link {route.qkdl_id} leads to node {route.peer_qkdn_id}, whose KME is not configured"
                " (kme.peers)",
            )
        return route, peer

    # --- ETSI 014 ---------------------------------------------------------------------------------
    async def _status(self, request: web.Request) -> web.StreamResponse:
        master = self.identity(request)
        slave = request.match_info["slave"]
        a = self.authorise(master, master, slave, "master")
        if request.query:
            raise bad(f"status takes no query parameters, got {next(iter(request.query))[:40]!r}")
        virt = a.virt_route(master, slave)
        if virt is not None:
            target, stored = self.relay.status(a, virt)
            body = status_body(
                source_kme_id=self.config.kme_id,
                target_kme_id=target,
                master_sae_id=master,
                slave_sae_id=slave,
                stored_bits=stored,
                limits=self.limits,
            )
            return web.json_response(body)
        route, peer = self._route(a, master, slave)
        body = status_body(
            source_kme_id=self.config.kme_id,
            target_kme_id=peer.kme_id,
            master_sae_id=master,
            slave_sae_id=slave,
            stored_bits=self.keystore.stored_bits(route.qkdl_id),
            limits=self.limits,
        )
        return web.json_response(body)

    async def _enc_keys(self, request: web.Request) -> web.StreamResponse:
        master = self.identity(request)
        slave = request.match_info["slave"]
        a = self.authorise(master, master, slave, "master")
        if request.method == "GET":
            req = parse_enc_query(list(request.query.items()), self.limits)
        else:
            if request.query:
                raise bad("POST enc_keys takes its parameters in the body, not the query string")
            req = parse_enc_body(await request.read(), self.limits)
        request_id, keys = await self.new_keys(a, master, slave, req.size, req.number)
        body = key_container_json(list(zip(key_ids(request_id, req.number), keys, strict=True)))
        return web.Response(body=body, content_type="application/json")

    async def _dec_keys(self, request: web.Request) -> web.StreamResponse:
        slave = self.identity(request)
        master = request.match_info["master"]
        self.authorise(slave, master, slave, "slave")
        if request.method == "GET":
            req = parse_dec_query(list(request.query.items()), self.limits)
        else:
            if request.query:
                raise bad("POST dec_keys takes its key_IDs in the body, not the query string")
            req = parse_dec_body(await request.read(), self.limits)
        keys = await self.take_keys(master, slave, req.key_ids)
        body = key_container_json(list(zip(req.key_ids, keys, strict=True)))
        return web.Response(body=body, content_type="application/json")

    # --- key delivery, shared by the ETSI 014 and SKIP front ends ----------------------------------
    async def new_keys(
        self, a: Authz, master: str, slave: str, size: int, number: int
    ) -> tuple[str, list[bytes]]:
        """A new request of ``number`` keys of ``size`` bits for master -> slave (the caller has been
        authorised and the numbers checked): shared with the far end over the backing link (direct or
        relayed) before they are returned. The request id (its first key_ID) and the keys."""
        virt = a.virt_route(master, slave)
        if virt is not None:
            request_id = new_request_id()
            keys = await self.relay.enc_keys(virt, master, slave, size, number, request_id)
        else:
            route, peer = self._route(a, master, slave)
            request_id = new_request_id()
            if self.node_id < route.peer_qkdn_id:
                keys = await self._deliver(route, peer, master, slave, size, number, request_id)
            else:
                keys = await self._draw(route, peer, master, slave, size, number, request_id)
        self.stats.keys_to_masters += len(keys)
        return request_id, keys

    async def take_keys(self, master: str, slave: str, ids: Sequence[str]) -> list[bytes]:
        """Hand out the keys ``ids`` (canonical key_IDs) kept here for master -> slave and erase them:
        all or none, once (a 400 names the first unknown or already delivered key_ID)."""
        keys = await self.store.take(master, slave, ids)
        self.stats.keys_to_slaves += len(keys)
        log.debug("KME %s: %d key(s) of %s delivered to %s", self.config.kme_id, len(keys), master, slave)
        return keys

    # --- the two ways of sharing a request's key with the peer -------------------------------------
    def _no_key(self, exc: KeyStoreError, qkdl_id: str) -> KmeError:
        if "not enough key" in str(exc):
            return KmeError(503, f"keys not ready: {exc.first.message}", [{"qkdl_id": qkdl_id}])
        return KmeError(503, f"the key store cannot serve the request: {exc.first.message}")

    async def _deliver(
        self,
        route: authz_mod.Route,
        peer: KmePeerConfig,
        master: str,
        slave: str,
        size: int,
        count: int,
        request_id: str,
    ) -> list[bytes]:
        """This end draws; the peer consumes the same ranges and keeps the keys for the slave."""
        try:
            ranges, material = await self.store.draw_for_delivery(
                request_id=request_id,
                qkdl_id=route.qkdl_id,
                peer=route.peer_qkdn_id,
                master=master,
                slave=slave,
                size=size,
                count=count,
            )
        except KmeError:
            raise
        except KeyStoreError as exc:
            raise self._no_key(exc, route.qkdl_id) from None
        msg = DeliverMsg(
            source_qkdn_id=self.node_id,
            request_id=request_id,
            qkdl_id=route.qkdl_id,
            master=master,
            slave=slave,
            size=size,
            number=count,
            ranges=tuple(ranges),
            digest=digest(request_id, route.qkdl_id, size, count, material),
        )
        try:
            await self._send(peer, msg)
        except PeerCallError as exc:
            raise await self._failed(request_id, route.qkdl_id, exc) from None
        await self.store.finish(request_id)
        return split_keys(material, size, count)

    async def _draw(
        self,
        route: authz_mod.Route,
        peer: KmePeerConfig,
        master: str,
        slave: str,
        size: int,
        count: int,
        request_id: str,
    ) -> list[bytes]:
        """The peer draws and keeps the keys for the slave; this end consumes the same ranges."""
        await self.store.journal_draw(
            request_id=request_id,
            qkdl_id=route.qkdl_id,
            peer=route.peer_qkdn_id,
            master=master,
            slave=slave,
            size=size,
            count=count,
        )
        msg = DrawMsg(
            source_qkdn_id=self.node_id,
            request_id=request_id,
            qkdl_id=route.qkdl_id,
            master=master,
            slave=slave,
            size=size,
            number=count,
        )
        try:
            answer = await self._send(peer, msg)
            ranges, expect = parse_draw_answer(answer)
        except PeerCallError as exc:
            # A refusal of draw is all or nothing at the peer: nothing to abort, unless no answer came.
            raise await self._failed(request_id, route.qkdl_id, exc, abort=exc.status is None) from None
        except KmeError as exc:
            raise await self._failed(
                request_id, route.qkdl_id, PeerCallError(peer, 200, "malformed", exc.message)
            ) from None
        try:
            return await self._apply(
                request_id=request_id,
                qkdl_id=route.qkdl_id,
                ranges=ranges,
                size=size,
                count=count,
                expect=expect,
                store_for=None,
            )
        except DivergenceError as exc:
            await self.store.discard_ranges(request_id=request_id, qkdl_id=route.qkdl_id, ranges=ranges)
            self._divergence(route.qkdl_id, request_id, str(exc))
            await self.store.fail(request_id, route.qkdl_id, "divergence", ranges=ranges)
            self._wake_aborts()
            raise KmeError(
                503,
                f"key divergence detected on link {route.qkdl_id}: the two ends of the link hold different"
                " key material for this request; the keys were discarded at both ends and the operator"
                " alerted",
            ) from None
        except (KeyStoreError, KmeError) as exc:
            message = exc.message if isinstance(exc, KmeError) else exc.first.message
            await self.store.fail(request_id, route.qkdl_id, message, ranges=ranges)
            self._wake_aborts()
            raise KmeError(
                503, f"keys not ready: the key drawn by the peer KME cannot be used here: {message}"
            ) from None

    async def _apply(
        self,
        *,
        request_id: str,
        qkdl_id: str,
        ranges: Sequence[KeyRange],
        size: int,
        count: int,
        expect: str,
        store_for: tuple[str, str] | None,
    ) -> list[bytes]:
        """Consume exactly the peer's ranges (waiting a little for blocks still in flight)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._block_wait_s
        while True:
            try:
                return await self.store.apply_ranges(
                    request_id=request_id,
                    qkdl_id=qkdl_id,
                    ranges=ranges,
                    size=size,
                    count=count,
                    expect_digest=expect,
                    store_for=store_for,
                    max_waiting=self.config.max_key_count,
                    finish_journal=store_for is None,
                )
            except MissingBlockError:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(BLOCK_POLL_S)

    async def _send(self, peer: KmePeerConfig, msg: PeerMsg) -> dict[str, Any]:
        if self._peer is None:
            raise PeerCallError(peer, None, "unavailable", "the KME is stopping")
        return await self._peer.send(peer, msg)

    async def _failed(
        self, request_id: str, qkdl_id: str, exc: PeerCallError, *, abort: bool = True
    ) -> KmeError:
        """Record a request that failed with the peer; the error for the SAE."""
        self.stats.failed_requests += 1
        bits = await self.store.fail(request_id, qkdl_id, exc.message, abort_peer=abort)
        if abort:
            self._wake_aborts()
        if exc.reason == "divergence":
            self._divergence(qkdl_id, request_id, exc.message)
            return KmeError(
                503,
                f"key divergence detected on link {qkdl_id}: the peer KME {exc.peer.kme_id} holds different"
                " key material for this request; the keys were discarded at both ends and the operator"
                " alerted",
            )
        if exc.reason == "no-key":
            return KmeError(
                503, f"keys not ready: the peer KME {exc.peer.kme_id} has not enough key: {exc.message}"
            )
        log.warning(
            "KME %s: request %s over link %s failed at the peer (%s); %d bits discarded here",
            self.config.kme_id,
            request_id,
            qkdl_id,
            exc,
            bits,
        )
        return KmeError(
            503,
            f"keys not ready: the peer KME {exc.peer.kme_id} could not take its part"
            f" ({exc.reason}: {exc.message}); the key drawn for this request was discarded",
        )

    def _divergence(self, qkdl_id: str, request_id: str, detail: str) -> None:
        self.stats.divergences += 1
        message = (
            f"KME {self.config.kme_id}: key divergence on link {qkdl_id} (request {request_id}): the two ends"
            " hold different key material for the same ranges"
        )
        log.error("%s: %s", message, detail)
        if self.bus is not None:
            self.bus.publish(notify.alarm(qkdl_id, None, message, severity="CRITICAL"))

    # --- peer channel (server side) ---------------------------------------------------------------
    def _caller_peer(self, request: web.Request, source_qkdn_id: str) -> KmePeerConfig:
        name = self.identity(request)
        peer = self._peers_by_id.get(source_qkdn_id)
        if peer is None or peer.kme_id != name:
            raise peer_error(
                401,
                "unauthorised",
                f"certificate {name!r} is not the KME configured for node {source_qkdn_id}",
            )
        return peer

    def _entitled(self, msg: DrawMsg, *, drawing_end: bool) -> None:
        why = self._authz().peer_may_share(msg.source_qkdn_id, msg.qkdl_id, msg.master, msg.slave)
        if why is not None:
            raise peer_error(401, "unauthorised", why)
        if (self.node_id < msg.source_qkdn_id) != drawing_end:
            role = "draw for" if drawing_end else "take delivery from"
            raise peer_error(
                400, "role", f"this end does not {role} node {msg.source_qkdn_id} on {msg.qkdl_id}"
            )

    async def _peer_batch(self, request: web.Request) -> web.StreamResponse:
        source, raw_ops = parse_envelope(await request.read())
        self._caller_peer(request, source)
        results: list[dict[str, Any] | None] = [None] * len(raw_ops)
        work: list[tuple[int, PeerMsg]] = []
        relays: list[tuple[int, Any]] = []
        for i, raw in enumerate(raw_ops):
            try:
                if isinstance(raw, dict) and raw.get("op") in RELAY_OPS:
                    rmsg = parse_relay_op(
                        raw,
                        source,
                        max_keys=self.limits.max_key_per_request,
                        max_size=self.limits.max_key_size,
                    )
                    relays.append((i, self.relay.serve(rmsg)))
                    continue
                msg = parse_op(
                    raw, source, max_keys=self.limits.max_key_per_request, max_size=self.limits.max_key_size
                )
                if isinstance(msg, DrawMsg):
                    self._entitled(msg, drawing_end=not isinstance(msg, DeliverMsg))
                else:
                    link = self._authz().links.get(msg.qkdl_id)
                    if link is not None and link.remote_qkdn_id != source:
                        # (a link no longer configured may still be cleaned up)
                        raise peer_error(
                            401,
                            "unauthorised",
                            f"link {msg.qkdl_id} does not join this node to node {source}",
                        )
                work.append((i, msg))
            except KmeError as exc:
                results[i] = failure(exc)
        relayed = asyncio.gather(*(c for _, c in relays), return_exceptions=True) if relays else None
        if work:
            outcomes = await self.store.call_many([self._peer_op(m) for _, m in work], "serve the peer")
            for (i, msg), outcome in zip(work, outcomes, strict=True):
                results[i] = await self._peer_result(msg, outcome)
        if relayed is not None:
            for (i, _), outcome in zip(relays, await relayed, strict=True):
                if isinstance(outcome, KmeError):
                    results[i] = failure(outcome)
                elif isinstance(outcome, BaseException):
                    log.error("KME %s: internal error relaying: %r", self.config.kme_id, outcome)
                    results[i] = failure(peer_error(503, "unavailable", "internal error of the peer KME"))
                else:
                    results[i] = ok(**outcome)
        return web.json_response({"results": results})

    def _peer_op(self, msg: PeerMsg) -> Callable[[KeyStoreBatch], Any]:
        if isinstance(msg, AbortMsg):
            return self.store.abort_here_op(msg.request_id, msg.qkdl_id, msg.ranges)
        if isinstance(msg, DeliverMsg):
            return self.store.apply_ranges_op(
                request_id=msg.request_id,
                qkdl_id=msg.qkdl_id,
                ranges=msg.ranges,
                size=msg.size,
                count=msg.number,
                expect_digest=msg.digest,
                store_for=(msg.master, msg.slave),
                max_waiting=self.config.max_key_count,
                finish_journal=False,
            )
        return self.store.draw_and_keep_op(
            request_id=msg.request_id,
            qkdl_id=msg.qkdl_id,
            master=msg.master,
            slave=msg.slave,
            size=msg.size,
            count=msg.number,
            max_waiting=self.config.max_key_count,
        )

    async def _peer_result(self, msg: PeerMsg, outcome: Any) -> dict[str, Any]:
        """The result of one op of a peer's batch (retrying a deliver whose blocks are still on their way)."""
        if isinstance(msg, DeliverMsg) and isinstance(outcome, MissingBlockError):
            try:
                outcome = await self._apply(
                    request_id=msg.request_id,
                    qkdl_id=msg.qkdl_id,
                    ranges=msg.ranges,
                    size=msg.size,
                    count=msg.number,
                    expect=msg.digest,
                    store_for=(msg.master, msg.slave),
                )
            except Exception as exc:
                outcome = exc
        if isinstance(outcome, BaseException):
            return failure(await self._peer_failure(msg, outcome))
        if isinstance(msg, AbortMsg):
            erased, bits, own = outcome
            self.stats.aborts_received += 1
            self._wake_aborts()  # a relay passes the abort on to its next hop
            log.warning(
                "KME %s: request %s over link %s aborted by the peer (%s): %d undelivered key(s) erased,"
                " %d bits discarded",
                self.config.kme_id,
                msg.request_id,
                msg.qkdl_id,
                msg.reason,
                erased,
                bits,
            )
            return ok(
                erased=erased, discarded_bits=bits, ranges=[[r.block_id, r.offset_bits, r.nbits] for r in own]
            )
        self.stats.keys_kept_for_slaves += msg.number
        if isinstance(msg, DeliverMsg):
            return ok(stored=msg.number)
        ranges, d = outcome
        return ok(ranges=[[r.block_id, r.offset_bits, r.nbits] for r in ranges], digest=d)

    async def _peer_failure(self, msg: PeerMsg, exc: BaseException) -> KmeError:
        if isinstance(exc, DivergenceError) and isinstance(msg, DeliverMsg):
            await self.store.discard_ranges(request_id=msg.request_id, qkdl_id=msg.qkdl_id, ranges=msg.ranges)
            self._divergence(msg.qkdl_id, msg.request_id, str(exc))
            return peer_error(409, "divergence", str(exc))
        if isinstance(exc, MissingBlockError):
            return peer_error(503, "missing-block", exc.first.message)
        if isinstance(exc, RangeConflictError):
            return peer_error(409, "conflict", exc.first.message)
        if isinstance(exc, KmeError):
            return peer_error(503, "full", exc.message)
        if isinstance(exc, KeyStoreError):
            reason = "no-key" if "not enough key" in str(exc) else "unavailable"
            return peer_error(503, reason, exc.first.message)
        log.error("KME %s: internal error serving the peer: %r", self.config.kme_id, exc)
        return peer_error(503, "unavailable", "internal error of the peer KME")

    # --- aborts (client side, background) -----------------------------------------------------------
    def _wake_aborts(self) -> None:
        if self._abort_wakeup is not None:
            self._abort_wakeup.set()

    async def _abort_loop(self) -> None:
        """Tell peers about failed requests until each has answered; retried every few seconds."""
        assert self._abort_wakeup is not None
        while True:
            self._abort_wakeup.clear()
            try:
                remaining = await self._send_aborts()
            except QsdnError as exc:
                log.warning("KME %s: cannot process aborts now: %s", self.config.kme_id, exc)
                remaining = 1
            timeout = ABORT_RETRY_S if remaining else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._abort_wakeup.wait(), timeout)

    async def _send_aborts(self) -> int:
        """Send every pending abort (they share the peer channel's batches); how many remain."""
        outcomes = await asyncio.gather(*(self._abort_one(e) for e in await self.store.aborting()))
        return sum(1 for done in outcomes if not done)

    async def _abort_one(self, entry: JournalEntry) -> bool:
        peer = self._peers_by_id.get(entry.peer)
        if peer is None:
            return False
        msg = AbortMsg(
            source_qkdn_id=self.node_id,
            request_id=entry.request_id,
            qkdl_id=entry.qkdl_id,
            reason=(entry.reason or "failed")[:1000],
            ranges=entry.ranges,
        )
        try:
            answer = await self._send(peer, msg)
            peer_ranges = parse_ranges(answer["ranges"]) if answer.get("ranges") else ()
        except PeerCallError as exc:
            log.info(
                "KME %s: abort of request %s not delivered yet: %s", self.config.kme_id, entry.request_id, exc
            )
            return False
        except KmeError as exc:
            log.warning("KME %s: bad answer to an abort: %s", self.config.kme_id, exc.message)
            peer_ranges = ()
        bits = await self.store.settle_abort(entry.request_id, entry.qkdl_id, peer_ranges)
        self.stats.aborts_sent += 1
        log.info(
            "KME %s: request %s aborted at the peer; %d more bits discarded here",
            self.config.kme_id,
            entry.request_id,
            bits,
        )
        return True


def _allow(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None
