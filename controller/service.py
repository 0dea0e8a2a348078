"""The controller: desired state, southbound sessions, key sessions end to end, reactions.

- **Desired state** (nodes, spans, sessions) lives in :class:`controller.store.Store`; reservations
  are derived from the active sessions.
- **Southbound**: one NETCONF session per node (a :class:`NodeClient`), with an RFC 5277
  subscription whose notifications feed :meth:`Controller._on_notification`. Discovery reads
  ``qkd_node`` (id, interfaces, PHYS links already provisioned).
- **Sessions**: path computation (pure, ``controller.pathcomp``) -> plan (pure,
  ``controller.provision``) -> one transaction across the nodes of the path
  (``controller.transaction``) -> reservations recorded. Any failure leaves no node with any part of
  the session, and the session records the node and the reason.
- **Reaction**: ``sdqkdn_link_down`` marks the span down and moves every session crossing it to a
  new path in one transaction (old path removed, new path created), timing the move; a lost node
  moves the sessions it relays, repeats or heralds (those ending there fail). Entanglement and mixed
  key sessions are re-planned (memories and key rates of the session itself count as free) and move
  to generation *n + 1* the same way; an ``entanglement_session_update`` with status ``down`` from a
  node of a segment moves that session off the elementary link's spans (the whole segment's when no
  ``link_id`` is given), which that session then never uses again. No path left: the session fails
  with the reason; its configuration and memories stay until it is deleted.
- **Reconciliation** after a restart: every node's configuration is compared with what the active
  sessions need; a node changed behind the controller's back is repaired.

All mutations are serialised by one asyncio lock: the controller is the single writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from lxml import etree

from controller.entanglement import (
    EntanglementPlan,
    EntanglementRequest,
    MemoryReservation,
    compute_entanglement_plan,
)
from controller.entanglement_provision import (
    ENT_NS,
    EntanglementSpec,
    elementary_link_id,
    plan_entanglement_session,
    plan_from_json,
    plan_to_json,
    segment_session_id,
)
from controller.model import MemoryParams, Node, NodeRole, Reservation, Span, StationParams, Topology
from controller.pathcomp import (
    PathComputation,
    PathRejectedError,
    PathRequest,
    classify_span,
    compute_paths,
)
from controller.provision import SessionPlan, SessionSpec, combine, phys_link_id, plan_session
from controller.southbound.base import NodeClient, NodeEndpoint
from controller.store import NodeRecord, SessionRecord, SpanRecord, Store
from controller.transaction import TransactionError, apply_transaction
from qsdn.errors import ErrorType, QsdnError

log = logging.getLogger(__name__)

NODE_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
NS = {"n": NODE_NS}
ClientFactory = Callable[[NodeEndpoint], NodeClient]


@dataclass
class NodeState:
    record: NodeRecord
    client: NodeClient | None = None
    reachable: bool = False
    last_seen: float | None = None
    interfaces: tuple[int, ...] = ()
    phys_links: frozenset[str] = frozenset()
    #: whether the node's configuration carries ``qsdn-entanglement`` memories (its hardware description)
    memories: bool = False
    pump: asyncio.Task[None] | None = None
    last_error: str | None = None


@dataclass
class RerouteEvent:
    session_id: str
    span_id: str
    started: float
    finished: float
    ok: bool
    detail: str = ""

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass
class ControllerSettings:
    confirm_timeout_s: int = 30
    step_timeout_s: float = 10.0
    activate_timeout_s: float = 10.0


class Controller:
    def __init__(
        self, store: Store, client_factory: ClientFactory, settings: ControllerSettings | None = None
    ) -> None:
        self.store = store
        self.client_factory = client_factory
        self.settings = settings or ControllerSettings()
        self.nodes: dict[str, NodeState] = {}
        self.down_spans: set[str] = set()
        #: the secret key rate each span's PHYS link reports (skr of sdqkdn_link_perf_update)
        self.measured_bps: dict[str, float] = {}
        self._link_spans: dict[str, str] = {}
        self.reroutes: list[RerouteEvent] = []
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._topo_cache: dict[bool, tuple[Any, Topology]] = {}
        self._stopping = False

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        for rec in self.store.nodes():
            self.nodes[rec.node_id] = NodeState(rec)
        await asyncio.gather(*(self._connect(st) for st in self.nodes.values()))
        await self.reconcile()

    async def stop(self) -> None:
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        for st in self.nodes.values():
            if st.pump is not None:
                st.pump.cancel()
        pending = [t for t in self._tasks] + [st.pump for st in self.nodes.values() if st.pump is not None]
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await asyncio.gather(*(st.client.close() for st in self.nodes.values() if st.client is not None))

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- southbound -------------------------------------------------------------------------------
    @staticmethod
    def endpoint(rec: NodeRecord, timeout_s: float) -> NodeEndpoint:
        return NodeEndpoint(
            host=rec.host,
            port=rec.port,
            username=rec.username,
            password=rec.password,
            client_keys=(rec.client_key,) if rec.client_key else (),
            timeout_s=timeout_s,
        )

    async def _connect(self, st: NodeState) -> bool:
        if st.client is not None:
            with contextlib.suppress(Exception):
                await st.client.close()
        client = self.client_factory(self.endpoint(st.record, self.settings.step_timeout_s))
        try:
            await client.connect()
            await client.subscribe()
            await self._discover(st, client)
        except QsdnError as exc:
            st.reachable = False
            st.last_error = str(exc)
            log.warning("node %s (%s) unreachable: %s", st.record.name, st.record.node_id, exc)
            with contextlib.suppress(Exception):
                await client.close()
            st.client = None
            return False
        st.client = client
        st.reachable = True
        st.last_seen = time.time()
        st.last_error = None
        st.pump = asyncio.get_running_loop().create_task(
            self._pump(st, client), name=f"notify-{st.record.name}"
        )
        return True

    async def _discover(self, st: NodeState, client: NodeClient) -> None:
        data = await client.get_config(subtree=f'<qkd_node xmlns="{NODE_NS}"/>')
        ids = _texts(data, "n:qkd_node/n:qkdn_id/text()")
        if ids and str(ids[0]) != st.record.node_id:
            raise QsdnError(
                f"node {st.record.name} at {st.record.host}:{st.record.port} reports qkdn_id {ids[0]},"
                f" expected {st.record.node_id}",
                tag="invalid-value",
            )
        st.interfaces = tuple(
            int(x) for x in _texts(data, "n:qkd_node/n:qkd_interfaces/n:qkd_interface/n:qkdi_id/text()")
        )
        st.phys_links = frozenset(
            _texts(data, "n:qkd_node/n:qkd_links/n:qkd_link[contains(n:qkdl_type, 'PHYS')]/n:qkdl_id/text()")
        )
        memories = f"{{{NODE_NS}}}qkd_node/{{{ENT_NS}}}entanglement/{{{ENT_NS}}}memories"
        st.memories = data.find(memories) is not None

    async def _pump(self, st: NodeState, client: NodeClient) -> None:
        try:
            async for note in client.notifications():
                st.last_seen = time.time()
                try:
                    await self._on_notification(st, note.body)
                except Exception:
                    log.exception("node %s: handling a notification failed", st.record.name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("node %s: notification stream ended: %s", st.record.name, exc)
        if not self._stopping:
            st.reachable = False
            st.last_error = "the NETCONF session ended"
            log.warning("node %s lost: re-routing the sessions it relays", st.record.name)
            self._spawn(
                self._reroute_node(st.record.node_id, time.monotonic()), f"reroute-node-{st.record.name}"
            )

    def client(self, node_id: str) -> NodeClient:
        st = self.nodes.get(node_id)
        if st is None:
            raise QsdnError(f"unknown node {node_id}", tag="invalid-value")
        if st.client is None or not st.reachable:
            raise QsdnError(
                f"node {st.record.name} ({node_id}) is unreachable: {st.last_error or 'no session'}",
                tag="resource-denied",
                info={"node": node_id, "reason": st.last_error or "no session"},
            )
        return st.client

    async def ensure_connected(self, node_ids: list[str]) -> None:
        for n in node_ids:
            st = self.nodes.get(n)
            if st is not None and (st.client is None or not st.reachable):
                await self._connect(st)

    # --- topology ---------------------------------------------------------------------------------
    async def add_node(self, rec: NodeRecord) -> None:
        async with self._lock:
            self.store.put_node(rec)
            st = self.nodes.get(rec.node_id)
            if st is None:
                st = self.nodes[rec.node_id] = NodeState(rec)
            else:
                st.record = rec
            await self._connect(st)

    async def add_span(self, rec: SpanRecord) -> None:
        async with self._lock:
            for end in (rec.a, rec.b):
                if end not in self.nodes:
                    raise QsdnError(f"span {rec.span_id}: unknown node {end}", tag="invalid-value")
            self.store.put_span(rec)

    def span_records(self) -> dict[str, SpanRecord]:
        return {s.span_id: s for s in self.store.spans()}

    def topology(self, *, exclude_down: bool = True) -> Topology:
        """The current topology snapshot; rebuilt only when nodes, spans or span health change, so
        the path computation's per-topology caches survive between requests."""
        records = self.store.spans()
        key = (
            tuple(
                (
                    n,
                    st.record.name,
                    st.record.trusted,
                    st.record.role,
                    tuple(sorted((st.record.entanglement or {}).items())),
                )
                for n, st in sorted(self.nodes.items())
            ),
            tuple((s.span_id, s.a, s.b, s.length_km, s.extra_loss_db, s.bands) for s in records),
            frozenset(self.down_spans) if exclude_down else frozenset(),
        )
        cached = self._topo_cache.get(exclude_down)
        if cached is not None and cached[0] == key:
            return cached[1]
        topo = self._build_topology(records, exclude_down)
        self._topo_cache[exclude_down] = (key, topo)
        return topo

    def _build_topology(self, records: list[SpanRecord], exclude_down: bool) -> Topology:
        nodes = [node_from_record(st.record) for st in self.nodes.values()]
        spans = [
            Span(
                span_id=s.span_id,
                a=s.a,
                b=s.b,
                length_km=s.length_km,
                extra_loss_db=s.extra_loss_db,
                bands=s.bands,
            )
            for s in records
            if not (exclude_down and s.span_id in self.down_spans)
        ]
        return Topology.build(nodes, spans)

    def reservations(self, *, excluding: str | None = None) -> list[Reservation]:
        """Active sessions' reservations, plus, for spans whose measured key rate (from
        ``sdqkdn_link_perf_update``) is below the model's prediction, the shortfall: the path
        computation then sees what the link really delivers."""
        out: list[Reservation] = []
        if self.measured_bps:
            spans = {s.span_id: s for s in self.store.spans()}
            for span_id, measured in self.measured_bps.items():
                rec = spans.get(span_id)
                if rec is None:
                    continue
                predicted = classify_span(
                    Span(span_id=span_id, a=rec.a, b=rec.b, length_km=rec.length_km,
                         extra_loss_db=rec.extra_loss_db, bands=rec.bands)
                ).predicted_rate_bps  # fmt: skip
                if 0 < measured < predicted:
                    out.append(Reservation(f"measured:{span_id}", span_id, predicted - measured))
        for s in self.store.sessions():
            if s.session_id == excluding or s.status not in ("active", "rerouting", "provisioning"):
                continue
            out.extend(Reservation(s.session_id, span, float(s.rate_bps)) for span in s.spans)
        return out

    def memory_reservations(self, *, excluding: str | None = None) -> list[MemoryReservation]:
        """Memories held by the entanglement and mixed key sessions whose configuration is (being) on the
        nodes; a session that failed after provisioning keeps them until it is deleted (a failed creation
        holds none)."""
        return [
            MemoryReservation(s.session_id, n, m)
            for s in self.store.sessions()
            if s.session_id != excluding
            and s.status in ("active", "rerouting", "provisioning", "deleting", "failed")
            for n, m in sorted(s.memories.items())
        ]

    def compute_entanglement(
        self,
        req: EntanglementRequest,
        *,
        excluding: str | None = None,
        without_spans: frozenset[str] = frozenset(),
    ) -> EntanglementPlan:
        """The best entanglement or mixed key plan for ``req`` (a dry run; unreachable nodes and down
        spans avoided). ``excluding``: a session whose reservations are not counted (the one being
        moved); ``without_spans``: further spans not to use."""
        unreachable = frozenset(n for n, st in self.nodes.items() if not st.reachable)
        if unreachable - {req.src, req.dst}:
            req = replace(req, avoid=req.avoid | (unreachable - {req.src, req.dst}))
        topo = self.topology()
        if without_spans & set(topo.spans):
            topo = Topology.build(
                list(topo.nodes.values()), [sp for sid, sp in topo.spans.items() if sid not in without_spans]
            )
        return compute_entanglement_plan(
            topo,
            req,
            reservations=self.reservations(excluding=excluding),
            memory_reservations=self.memory_reservations(excluding=excluding),
        )

    def compute_key(self, s: SessionRecord, *, excluding: str | None = None) -> PathComputation:
        """The trusted-relay paths of key session ``s``; a path refused only because of its
        ``max_trusted_nodes`` is refused naming that bound and the fewest relays possible."""
        req = self._request(s)
        try:
            return self.compute(req, excluding=excluding)
        except PathRejectedError as exc:
            bound = s.max_trusted_nodes
            if (
                bound is None
                or exc.constraint != "max-hops"
                or (s.max_hops is not None and s.max_hops <= bound)
            ):
                raise
            fewest = int(exc.first.info.get("min_hops", "0")) - 1
            names = self._names((s.src_node, s.dst_node))
            raise PathRejectedError(
                f"no key path from {names[0]} to {names[1]} with at most {bound} trusted relay(s): the "
                f"fewest possible is {fewest} (a key session without repeaters relays through trusted "
                "nodes only)",
                info={
                    "constraint": "max-trusted",
                    "max_trusted_nodes": str(bound),
                    "min_trusted_nodes": str(fewest),
                },
            ) from exc

    def compute(self, req: PathRequest, *, excluding: str | None = None) -> PathComputation:
        unreachable = frozenset(n for n, st in self.nodes.items() if not st.reachable)
        if unreachable:
            req = replace(req, avoid=req.avoid | (unreachable - {req.src, req.dst}))
        return compute_paths(self.topology(), self.reservations(excluding=excluding), req)

    # --- sessions ---------------------------------------------------------------------------------
    def _request(self, s: SessionRecord) -> PathRequest:
        """The trusted-relay path request of a key session; ``max_trusted_nodes`` bounds its hops (every
        interior node of a trusted-relay path is a trusted relay)."""
        max_hops = s.max_hops
        if s.max_trusted_nodes is not None:
            bound = s.max_trusted_nodes + 1
            max_hops = bound if max_hops is None else min(max_hops, bound)
        return PathRequest(
            src=s.src_node,
            dst=s.dst_node,
            rate_bps=float(s.rate_bps),
            max_hops=max_hops,
            disjoint_backup=s.disjoint_backup,
            avoid=frozenset(s.avoid),
            trusted=frozenset(s.trusted_relays) if s.trusted_relays is not None else None,
        )

    def _plan(
        self,
        s: SessionRecord,
        path: tuple[str, ...],
        spans: tuple[str, ...],
        generation: int,
        *,
        full: bool = False,
    ) -> SessionPlan:
        """The session's plan; ``full`` includes the complete PHYS links even where they exist."""
        recs = self.span_records()
        interfaces: dict[tuple[str, str], int] = {}
        for span_id in spans:
            r = recs[span_id]
            interfaces[(r.a, span_id)] = r.a_qkdi_id
            interfaces[(r.b, span_id)] = r.b_qkdi_id
        # a PHYS link counts as existing only when both of its ends have it
        both = frozenset(
            phys_link_id(sp)
            for sp in spans
            if phys_link_id(sp) in self.nodes[recs[sp].a].phys_links
            and phys_link_id(sp) in self.nodes[recs[sp].b].phys_links
        )
        return plan_session(
            SessionSpec(s.session_id, s.src_sae, s.dst_sae, s.rate_bps),
            path,
            spans,
            interfaces,
            existing=frozenset() if full else both,
            generation=generation,
        )

    def _entanglement_request(self, s: SessionRecord) -> EntanglementRequest:
        key = s.service != "entanglement"
        return EntanglementRequest(
            src=s.src_node,
            dst=s.dst_node,
            service="key" if key else "entanglement",
            target_fidelity=s.target_fidelity,
            min_pair_rate_hz=s.min_pair_rate_hz,
            min_key_rate_bps=float(s.rate_bps) if key else 0.0,
            max_trusted_nodes=s.max_trusted_nodes,
            max_rounds=s.max_rounds,
            avoid=frozenset(s.avoid),
        )

    def _entanglement_plan(self, s: SessionRecord, *, full: bool = False) -> SessionPlan:
        """The per-node plan of an entanglement or mixed key session, from the plan it was given."""
        if s.plan is None:
            raise QsdnError(f"session {s.session_id} has no entanglement plan", tag="operation-failed")
        plan = plan_from_json(s.plan)
        recs = self.span_records()
        interfaces: dict[tuple[str, str], int] = {}
        for span_id in s.spans:
            r = recs[span_id]
            interfaces[(r.a, span_id)] = r.a_qkdi_id
            interfaces[(r.b, span_id)] = r.b_qkdi_id
        both = frozenset(
            phys_link_id(sp)
            for sp in s.spans
            if phys_link_id(sp) in self.nodes[recs[sp].a].phys_links
            and phys_link_id(sp) in self.nodes[recs[sp].b].phys_links
        )
        return plan_entanglement_session(
            EntanglementSpec(
                s.session_id,
                "entanglement" if s.service == "entanglement" else "key",
                s.src_sae,
                s.dst_sae,
                s.rate_bps,
                s.target_fidelity,
                s.min_pair_rate_hz,
            ),
            plan,
            self.topology(exclude_down=False),
            interfaces,
            existing=frozenset() if full else both,
            nodes_with_memories=frozenset(n for n, st in self.nodes.items() if st.memories),
            generation=s.generation,
        )

    def session_plan(self, s: SessionRecord, *, full: bool = False) -> SessionPlan:
        """The per-node plan of any provisioned session (``full``: PHYS links in full even where they
        exist)."""
        if s.planned:
            return self._entanglement_plan(s, full=full)
        return self._plan(s, s.path, s.spans, s.generation, full=full)

    async def _create_planned(self, s: SessionRecord) -> SessionRecord:
        """An entanglement or mixed key session: plan (memories and key rates after the other sessions'
        reservations), provision every node in one transaction, keep the plan and the reservation."""
        plan = self.compute_entanglement(self._entanglement_request(s))
        _adopt(s, plan)
        s.status = "provisioning"
        s.last_error = s.last_error_node = None
        self.store.put_session(s)
        sp = self._entanglement_plan(s)
        try:
            await self._apply(sp.edits)
            await self._activate(sp)
        except QsdnError as exc:
            s.status = "failed"
            s.last_error = exc.first.message
            s.last_error_node = getattr(exc, "node", None) or exc.first.info.get("node")
            s.spans = s.plan_spans = ()
            s.memories = {}
            self.store.put_session(s)
            raise
        s.status = "active"
        self.store.put_session(s)
        log.info("%s session %s active over %s", s.service, s.session_id, " - ".join(self._names(s.path)))
        return s

    async def create_session(self, s: SessionRecord) -> SessionRecord:
        async with self._lock:
            if not s.session_id:
                s.session_id = str(uuid.uuid4())
            old = self.store.session(s.session_id)
            if old is not None and old.status == "active":
                return old  # idempotent retry
            for n in (s.src_node, s.dst_node):
                if n not in self.nodes:
                    raise QsdnError(f"session {s.session_id}: unknown node {n}", tag="invalid-value")
            if s.planned:
                return await self._create_planned(s)
            comp = self.compute_key(s)
            best = comp.best
            s.path, s.spans = tuple(best.nodes), tuple(best.spans)
            s.backup_path = tuple(comp.backup.nodes) if comp.backup is not None else ()
            s.status = "provisioning"
            s.last_error = s.last_error_node = None
            plan = self._plan(s, s.path, s.spans, s.generation)
            try:
                await self._apply(plan.edits)
                await self._activate(plan)
            except QsdnError as exc:
                s.status = "failed"
                s.last_error = exc.first.message
                s.last_error_node = getattr(exc, "node", None) or exc.first.info.get("node")
                s.spans = ()
                self.store.put_session(s)
                raise
            s.status = "active"
            self.store.put_session(s)
            log.info("session %s active over %s", s.session_id, " - ".join(self._names(s.path)))
            return s

    async def delete_session(self, session_id: str) -> None:
        async with self._lock:
            s = self.store.session(session_id)
            if s is None:
                raise QsdnError(f"no session {session_id}", tag="data-missing")
            provisioned = s.plan is not None and bool(s.plan_spans)
            if (
                s.path
                and s.status in ("active", "rerouting", "provisioning", "failed")
                and (s.spans or provisioned)
            ):
                plan = self.session_plan(s)
                reachable = {n: x for n, x in plan.removals.items() if self.nodes[n].reachable}
                s.status = "deleting"
                self.store.put_session(s)
                await self._apply(reachable)
            self.store.delete_session(session_id)

    async def _apply(self, edits: Mapping[str, str]) -> None:
        await self.ensure_connected(list(edits))
        clients = {n: self.client(n) for n in edits}
        try:
            await apply_transaction(
                clients,
                edits,
                confirm_timeout_s=self.settings.confirm_timeout_s,
                step_timeout_s=self.settings.step_timeout_s,
            )
        except TransactionError as exc:
            st = self.nodes.get(exc.node)
            name = st.record.name if st else exc.node
            raise TransactionError(exc.node, exc.step, exc.reason, exc.errors[1:], label=name) from exc
        # record the PHYS links (and memories) now present on each node
        for n, xml in edits.items():
            root = etree.fromstring(xml)
            if root.find(f"{{{ENT_NS}}}entanglement/{{{ENT_NS}}}memories") is not None:
                self.nodes[n].memories = True
            added = {
                str(x)
                for x in _texts(
                    root, "n:qkd_links/n:qkd_link[contains(n:qkdl_type, 'PHYS')]/n:qkdl_id/text()"
                )
            }
            self.nodes[n].phys_links = self.nodes[n].phys_links | added

    async def _activate(self, plan: SessionPlan) -> None:
        """Set ``qkdl_status`` ACTIVE on new PHYS links once both ends produce key (SYSTEM.md 2, step 1)."""
        deadline = time.monotonic() + self.settings.activate_timeout_s
        for hop in plan.hops:
            if hop.qkdl_id not in plan.new_links:
                continue
            tx = self.client(hop.transmitter)
            while True:
                data = await tx.get(
                    subtree=f'<qkd_node xmlns="{NODE_NS}"><qkd_links><qkd_link>'
                    f"<qkdl_id>{hop.qkdl_id}</qkdl_id><qkdl_status/><qkdl_performance/>"
                    "</qkd_link></qkd_links></qkd_node>"
                )
                status = "".join(_texts(data, "//n:qkdl_status/text()"))
                skr = "".join(_texts(data, "//n:qkdl_performance/n:skr/text()"))
                if status.endswith("ACTIVE"):
                    break
                if skr and int(skr) > 0:
                    for end in (hop.transmitter, hop.receiver):
                        await self.client(end).edit_config(
                            f'<qkd_node xmlns="{NODE_NS}" xmlns:t="urn:etsi:qkd:yang:etsi-qkd-node-types">'
                            f"<qkd_links><qkd_link><qkdl_id>{hop.qkdl_id}</qkdl_id>"
                            "<qkdl_status>t:ACTIVE</qkdl_status></qkd_link></qkd_links></qkd_node>"
                        )
                    break
                if time.monotonic() > deadline:
                    log.warning("PHYS link %s did not start producing key; left OFF", hop.qkdl_id)
                    break
                await asyncio.sleep(0.05)

    def _names(self, path: tuple[str, ...]) -> list[str]:
        return [self.nodes[n].record.name if n in self.nodes else n for n in path]

    # --- reaction ---------------------------------------------------------------------------------
    async def _on_notification(self, st: NodeState, body: etree._Element) -> None:
        name = etree.QName(body).localname
        if name == "sdqkdn_link_down":
            qkdl_id = body.findtext(f"{{{NODE_NS}}}qkd_link/{{{NODE_NS}}}qkdl_id")
            reason = body.findtext(f"{{{NODE_NS}}}qkd_link/{{{NODE_NS}}}reason") or ""
            span = next((s.span_id for s in self.store.spans() if phys_link_id(s.span_id) == qkdl_id), None)
            if span is None or span in self.down_spans:
                return
            log.warning(
                "span %s down (%s, reported by %s): re-routing its sessions", span, reason, st.record.name
            )
            self.down_spans.add(span)
            self._spawn(self._reroute_span(span, time.monotonic()), f"reroute-{span}")
        elif name == "entanglement_session_update" and etree.QName(body).namespace == ENT_NS:
            self._on_entanglement_update(st, body)
        elif name == "sdqkdn_link_perf_update":
            qkdl_id = body.findtext(f"{{{NODE_NS}}}qkd_link/{{{NODE_NS}}}qkdl_id")
            skr = body.findtext(f"{{{NODE_NS}}}qkd_link/{{{NODE_NS}}}performance/{{{NODE_NS}}}skr")
            span = self._span_of_link(qkdl_id)
            if span is None or skr is None:
                return
            rate = float(skr)
            if rate > 0:
                self.measured_bps[span] = rate
            if span in self.down_spans and rate > 0:
                # ETSI 015 has no link-up event: a down span that produces key again is usable again.
                log.info("span %s produces key again (reported by %s)", span, st.record.name)
                self.down_spans.discard(span)

    def _span_of_link(self, qkdl_id: str | None) -> str | None:
        if qkdl_id is None:
            return None
        if qkdl_id not in self._link_spans:
            self._link_spans = {phys_link_id(s.span_id): s.span_id for s in self.store.spans()}
        return self._link_spans.get(qkdl_id)

    async def _reroute_span(self, span_id: str, started: float) -> None:
        """A lost span: move every session crossing it (trusted-relay hops, repeater segments)."""
        async with self._lock:
            for s in self.store.sessions():
                if s.status != "active" or span_id not in (s.plan_spans if s.planned else s.spans):
                    continue
                await self._reroute(s, span_id, f"span {span_id}", started)

    async def _reroute_node(self, node_id: str, started: float) -> None:
        """A lost node: move the sessions it relays (or repeats, or heralds); sessions ending there
        cannot be moved."""
        async with self._lock:
            for s in self.store.sessions():
                if s.status != "active" or node_id not in s.path:
                    continue
                if node_id in (s.src_node, s.dst_node):
                    s.status = "failed"
                    s.last_error = f"end node {self.nodes[node_id].record.name} is unreachable"
                    s.last_error_node = node_id
                    self.store.put_session(s)
                    log.error("session %s: %s", s.session_id, s.last_error)
                    continue
                await self._reroute(
                    s, f"node:{node_id}", f"node {self.nodes[node_id].record.name}", started, node=node_id
                )

    async def _reroute(
        self, s: SessionRecord, cause: str, what: str, started: float, *, node: str | None = None
    ) -> None:
        """Move ``s`` off the lost element ``what``; if that fails, the session is failed with the reason."""
        ok, detail = True, ""
        try:
            if s.planned:
                await self._move_planned(s)
            else:
                await self._move(s)
        except QsdnError as exc:
            ok, detail = False, str(exc)
            s.status = "failed"
            s.last_error = f"re-route after the loss of {what} failed: {exc.first.message}"
            s.last_error_node = node or getattr(exc, "node", None) or exc.first.info.get("node")
            self.store.put_session(s)
            log.error("session %s: %s", s.session_id, s.last_error)
        self.reroutes.append(RerouteEvent(s.session_id, cause, started, time.monotonic(), ok, detail))

    # entanglement sessions report on their own (qsdn-entanglement entanglement_session_update)
    def _segment_of(self, ent_session_id: str) -> tuple[SessionRecord, int] | None:
        """The active planned session, and the index of its segment, that runs ``ent_session_id`` now."""
        for s in self.store.sessions():
            if not s.planned or s.plan is None or s.status != "active":
                continue
            for index in range(len(s.plan.get("segments", ()))):
                if segment_session_id(s.session_id, s.generation, index) == ent_session_id:
                    return s, index
        return None

    def _on_entanglement_update(self, st: NodeState, body: etree._Element) -> None:
        sess = body.find(f"{{{ENT_NS}}}session")
        if sess is None:
            return
        ent_sid = sess.findtext(f"{{{ENT_NS}}}session_id") or ""
        status = sess.findtext(f"{{{ENT_NS}}}status") or ""
        reason = sess.findtext(f"{{{ENT_NS}}}reason") or ""
        link_id = sess.findtext(f"{{{ENT_NS}}}link_id")
        found = self._segment_of(ent_sid)
        if found is None:
            return  # an earlier generation (already moved) or not ours
        s, index = found
        if status not in ("down", "failed"):
            if status == "degraded":
                log.warning("session %s: %s reports it degraded (%s)", s.session_id, st.record.name, reason)
            return
        seg = plan_from_json(s.plan or {}).segments[index]
        spans = seg.spans
        for j, link in enumerate(seg.links):
            if link_id is not None and elementary_link_id(s.session_id, s.generation, index, j) == link_id:
                spans = link.spans
        log.warning(
            "session %s: %s reports segment %d down (%s%s): re-planning without span(s) %s",
            s.session_id,
            st.record.name,
            index,
            reason or "no reason",
            f", elementary link {link_id}" if link_id else "",
            ", ".join(spans),
        )
        self._spawn(
            self._reroute_segment(s.session_id, ent_sid, spans, time.monotonic()), f"reroute-{ent_sid}"
        )

    async def _reroute_segment(
        self, session_id: str, ent_session_id: str, spans: tuple[str, ...], started: float
    ) -> None:
        """A repeater segment of ``session_id`` went down over ``spans``: move the session without them."""
        async with self._lock:
            found = self._segment_of(ent_session_id)
            if found is None or found[0].session_id != session_id:
                return  # moved (or deleted) meanwhile: the report was about a generation that is gone
            s = found[0]
            s.failed_spans = tuple(sorted(set(s.failed_spans) | set(spans)))
            self.store.put_session(s)
            what = f"span {', '.join(spans)}" if len(spans) == 1 else f"spans {', '.join(spans)}"
            await self._reroute(s, ",".join(spans), what, started)

    def _move_edits(self, old: SessionPlan, new: SessionPlan) -> dict[str, str]:
        """One edit per node moving a session from ``old`` to ``new``: the old removals (on nodes that
        are still reachable) combined with the new edits, by node id."""
        edits: dict[str, str] = {}
        for n in sorted(set(old.removals) | set(new.edits)):
            parts = []
            if n in old.removals and self.nodes[n].reachable:
                parts.append(old.removals[n])
            if n in new.edits:
                parts.append(new.edits[n])
            if parts:
                edits[n] = combine(*parts)
        return edits

    async def _move_planned(self, s: SessionRecord) -> None:
        """Move an entanglement or mixed key session to a new plan in one transaction: generation *n*
        removed, *n + 1* created (new derived ids), its memories and key rates moved with it."""
        old = self._entanglement_plan(s)
        s.status = "rerouting"
        self.store.put_session(s)
        plan = self.compute_entanglement(
            self._entanglement_request(s), excluding=s.session_id, without_spans=frozenset(s.failed_spans)
        )
        moved = replace(s, history=list(s.history), generation=s.generation + 1)
        _adopt(moved, plan)
        new = self._entanglement_plan(moved)
        await self._apply(self._move_edits(old, new))
        await self._activate(new)
        _adopt(s, plan)
        s.generation = moved.generation
        s.status = "active"
        s.history.append({"at": time.time(), "event": "rerouted", "path": list(plan.nodes)})
        self.store.put_session(s)
        log.info("%s session %s moved to %s", s.kind, s.session_id, " - ".join(self._names(plan.nodes)))

    async def _move(self, s: SessionRecord) -> None:
        old = self._plan(s, s.path, s.spans, s.generation)
        s.status = "rerouting"
        self.store.put_session(s)
        comp = self.compute_key(s, excluding=s.session_id)
        new_path, new_spans = tuple(comp.best.nodes), tuple(comp.best.spans)
        new = self._plan(s, new_path, new_spans, s.generation + 1)
        await self._apply(self._move_edits(old, new))
        await self._activate(new)
        s.path, s.spans, s.generation = new_path, new_spans, s.generation + 1
        s.backup_path = tuple(comp.backup.nodes) if comp.backup is not None else ()
        s.status = "active"
        s.history.append({"at": time.time(), "event": "rerouted", "path": list(new_path)})
        self.store.put_session(s)
        log.info("session %s moved to %s", s.session_id, " - ".join(self._names(new_path)))

    # --- reconciliation ---------------------------------------------------------------------------
    async def reconcile(self) -> list[str]:
        """Repair every reachable node whose configuration lacks what an active session needs."""
        repaired: list[str] = []
        async with self._lock:
            for s in self.store.sessions():
                if s.status not in ("active", "rerouting") or not s.path:
                    continue
                plan = self.session_plan(s, full=True)
                broken: dict[str, str] = {}
                for n, xml in plan.edits.items():
                    st = self.nodes.get(n)
                    if st is None or not st.reachable or st.client is None:
                        continue
                    have = await st.client.get_config(subtree=f'<qkd_node xmlns="{NODE_NS}"/>')
                    if not contains(have, etree.fromstring(xml)):
                        broken[n] = xml
                if broken:
                    log.warning(
                        "session %s: node(s) %s differ from the desired configuration; repairing",
                        s.session_id,
                        ", ".join(self._names(tuple(broken))),
                    )
                    await self._apply(broken)
                    await self._activate(plan)
                    repaired.extend(broken)
                if s.status == "rerouting":
                    s.status = "active"
                    self.store.put_session(s)
        return repaired


def _adopt(s: SessionRecord, plan: EntanglementPlan) -> None:
    """Record ``plan`` as the session's plan: path, QKD spans (key-rate reservations), spans, memories."""
    s.plan = plan_to_json(plan)
    s.path = plan.nodes
    s.spans = tuple(seg.spans[0] for seg in plan.segments if seg.technology == "qkd")
    s.plan_spans = tuple(sp for seg in plan.segments for sp in seg.spans)
    s.memories = dict(plan.memories)
    s.backup_path = ()


_MEMORY_FIELDS = {
    "memories": "memories",
    "coherence_time_s": "coherence_s",
    "swap_success_probability": "swap_success",
    "initial_fidelity": "initial_fidelity",
    "modes": "modes",
}


def node_from_record(rec: NodeRecord) -> Node:
    """The path computation's :class:`Node` for a stored node.

    Roles other than ``relay``, ``repeater`` and ``bsm-station`` are endpoints. Repeaters and stations are
    never trusted, whatever the record says. ``rec.entanglement`` (the orchestrator's ``entanglement``
    leaves) gives a repeater's or an endpoint's/relay's memories (an endpoint or relay has memories only
    when some memory leaf is given) and a station's ``detector_efficiency``; absent leaves take the
    :class:`MemoryParams` / :class:`StationParams` defaults.
    """
    role: NodeRole = rec.role if rec.role in ("relay", "repeater", "bsm-station") else "endpoint"  # type: ignore[assignment]
    params = dict(rec.entanglement or {})
    memory: MemoryParams | None = None
    station: StationParams | None = None
    if role == "bsm-station":
        if "detector_efficiency" in params:
            station = StationParams(detector_efficiency=float(params["detector_efficiency"]))
    elif role == "repeater" or any(k in params for k in _MEMORY_FIELDS):
        kwargs: dict[str, float | int] = {}
        for key, attr in _MEMORY_FIELDS.items():
            if key in params:
                value = params[key]
                kwargs[attr] = int(value) if attr in ("memories", "modes") else float(value)
        memory = MemoryParams(**kwargs)  # type: ignore[arg-type]
    return Node(
        node_id=rec.node_id,
        name=rec.name,
        trusted=rec.trusted and role not in ("repeater", "bsm-station"),
        role=role,
        memory=memory,
        station=station,
    )


def _texts(el: etree._Element, path: str) -> list[str]:
    found = el.xpath(path, namespaces=NS)
    return [str(x) for x in found] if isinstance(found, list) else []


def _key(entry: etree._Element) -> tuple[str, str]:
    for k in ("qkdl_id", "app_id", "qkdi_id"):
        v = entry.findtext(f"{{{NODE_NS}}}{k}")
        if v is not None:
            return k, v
    return "", ""


def contains(have_data: etree._Element, want_node: etree._Element) -> bool:
    """Whether ``have_data`` (a ``<data>`` reply) holds every list entry and leaf of ``want_node``."""
    node = have_data.find(f"{{{NODE_NS}}}qkd_node")
    if node is None:
        return False
    return _subset(want_node, node)


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


def _value(el: etree._Element) -> str:
    text = (el.text or "").strip()
    return text.split(":", 1)[1] if ":" in text and not text.startswith("urn:") else text


def _same(a: str, b: str) -> bool:
    """Equal leaf values; decimals compare as numbers (``25.000`` is libyang's ``25.0``)."""
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def _subset(want: etree._Element, have: etree._Element) -> bool:
    for w in want:
        if not isinstance(w.tag, str) or _local(w) == "qkdl_status":
            continue  # the status is the controller's to set after provisioning
        candidates = [h for h in have if isinstance(h.tag, str) and _local(h) == _local(w)]
        if len(w) == 0:
            if not any(_same(_value(h), _value(w)) for h in candidates):
                return False
            continue
        k = _key(w)
        if k != ("", ""):
            candidates = [h for h in candidates if _key(h) == k]
        if not any(_subset(w, h) for h in candidates):
            return False
    return True


__all__ = [
    "Controller",
    "ControllerSettings",
    "ErrorType",
    "RerouteEvent",
    "contains",
    "field",
    "node_from_record",
]
