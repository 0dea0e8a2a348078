"""The controller's desired state in SQLite: nodes, spans, sessions and their reservations.

Every record is a small JSON document keyed by its id, written in one SQLite transaction per change
(WAL mode, synchronous=FULL), so a controller that crashes mid-change restarts with either the old or
the new record, never half of one. Reservations are derived from the active sessions (each session
reserves its rate on every QKD span of its path, and an entanglement or mixed session its quantum
memories per node, with the plan it was provisioned with), so they cannot drift from the sessions.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qsdn.errors import QsdnError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind  TEXT NOT NULL CHECK (kind IN ('node', 'span', 'session')),
    id    TEXT NOT NULL,
    doc   TEXT NOT NULL,
    at    REAL NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
"""


@dataclass
class NodeRecord:
    node_id: str
    name: str
    host: str
    port: int = 830
    username: str = "admin"
    password: str | None = None
    client_key: str | None = None
    trusted: bool = True
    role: str = "endpoint"
    location: str | None = None
    #: optional entanglement parameters (controller.model.MemoryParams / StationParams fields, by the
    #: names of the qsdn-orchestrator ``entanglement`` container); ``None``: the role's defaults
    entanglement: dict[str, float] | None = None

    def __repr__(self) -> str:  # never show credentials
        return (
            f"NodeRecord(node_id={self.node_id!r}, name={self.name!r}, host={self.host!r}, port={self.port})"
        )


@dataclass
class SpanRecord:
    span_id: str
    a: str
    b: str
    length_km: float
    extra_loss_db: float = 0.0
    bands: tuple[str, ...] = ("C", "O")
    a_qkdi_id: int = 1
    b_qkdi_id: int = 1


@dataclass
class SessionRecord:
    session_id: str
    src_node: str
    dst_node: str
    src_sae: str
    dst_sae: str
    rate_bps: int
    max_hops: int | None = None
    disjoint_backup: bool = False
    avoid: tuple[str, ...] = ()
    trusted_relays: tuple[str, ...] | None = None
    # state
    status: str = "requested"
    path: tuple[str, ...] = ()
    spans: tuple[str, ...] = ()
    backup_path: tuple[str, ...] = ()
    generation: int = 0
    last_error: str | None = None
    last_error_node: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    # entanglement and mixed key sessions (controller/entanglement.py); absent: a trusted-relay session
    #: ``key`` or ``entanglement``
    service: str = "key"
    #: key over a mixed path (trusted-relay QKD hops and quantum-repeater segments)
    repeaters: bool = False
    target_fidelity: float | None = None
    min_pair_rate_hz: float = 0.0
    max_trusted_nodes: int | None = None
    max_rounds: int = 3
    #: the provisioned EntanglementPlan (controller.entanglement_provision.plan_to_json)
    plan: dict[str, Any] | None = None
    #: quantum memories the session holds per node (its reservation)
    memories: dict[str, int] = field(default_factory=dict)
    #: every span of the plan (``spans`` holds only the QKD hops, which carry key-rate reservations)
    plan_spans: tuple[str, ...] = ()
    #: spans whose failure under this session moved it (an elementary link reported down): its re-plans
    #: avoid them, so a persistent fault cannot make the session flap between two paths
    failed_spans: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """``entanglement``, ``mixed key`` or ``key`` (trusted relay), for messages."""
        return "mixed key" if self.service != "entanglement" and self.repeaters else self.service

    @property
    def planned(self) -> bool:
        """Whether the entanglement planner serves this session (entanglement, or key with repeaters)."""
        return self.service == "entanglement" or self.repeaters


_KINDS: dict[str, type[Any]] = {"node": NodeRecord, "span": SpanRecord, "session": SessionRecord}
_TUPLES = {"bands", "avoid", "trusted_relays", "path", "spans", "backup_path", "plan_spans", "failed_spans"}


def _decode(kind: str, doc: str) -> Any:
    data = json.loads(doc)
    for k in _TUPLES & set(data):
        if data[k] is not None:
            data[k] = tuple(data[k])
    return _KINDS[kind](**data)


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _put(self, kind: str, key: str, record: Any) -> None:
        self._db.execute(
            "INSERT INTO records (kind, id, doc, at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc, at = excluded.at",
            (kind, key, json.dumps(asdict(record), sort_keys=True), time.time()),
        )

    def _all(self, kind: str) -> list[Any]:
        rows = self._db.execute("SELECT doc FROM records WHERE kind = ? ORDER BY id", (kind,)).fetchall()
        return [_decode(kind, r[0]) for r in rows]

    def _get(self, kind: str, key: str) -> Any:
        row = self._db.execute("SELECT doc FROM records WHERE kind = ? AND id = ?", (kind, key)).fetchone()
        return None if row is None else _decode(kind, row[0])

    def _delete(self, kind: str, key: str) -> bool:
        cur = self._db.execute("DELETE FROM records WHERE kind = ? AND id = ?", (kind, key))
        return cur.rowcount > 0

    # typed accessors
    def put_node(self, n: NodeRecord) -> None:
        self._put("node", n.node_id, n)

    def put_span(self, s: SpanRecord) -> None:
        self._put("span", s.span_id, s)

    def put_session(self, s: SessionRecord) -> None:
        self._put("session", s.session_id, s)

    def nodes(self) -> list[NodeRecord]:
        return self._all("node")

    def spans(self) -> list[SpanRecord]:
        return self._all("span")

    def sessions(self) -> list[SessionRecord]:
        return self._all("session")

    def node(self, node_id: str) -> NodeRecord | None:
        rec: NodeRecord | None = self._get("node", node_id)
        return rec

    def session(self, session_id: str) -> SessionRecord | None:
        rec: SessionRecord | None = self._get("session", session_id)
        return rec

    def delete_session(self, session_id: str) -> bool:
        return self._delete("session", session_id)

    def delete_node(self, node_id: str) -> bool:
        if any(s.a == node_id or s.b == node_id for s in self.spans()):
            raise QsdnError(f"node {node_id} still has fibre spans; delete them first", tag="data-exists")
        return self._delete("node", node_id)

    def delete_span(self, span_id: str) -> bool:
        if any(
            span_id in s.spans or span_id in s.plan_spans
            for s in self.sessions()
            if s.status in ("active", "rerouting", "provisioning")
        ):
            raise QsdnError(f"span {span_id} carries sessions; delete or move them first", tag="data-exists")
        return self._delete("span", span_id)
