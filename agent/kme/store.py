"""The KME's persistent state, in the node's key store database, written from one worker thread.

Tables (next to the key store's ``blocks`` and ``accounting``, so that taking link key and recording
what it became commit in one transaction):

``kme_keys``
    keys waiting for their slave SAE, one row per request: the request id (the key_ID of its first
    key; key *i* has index *i*, :func:`agent.kme.etsi014.key_ids`), link, master and slave SAE, size,
    number of keys, a waiting flag per key and the keys' bytes. ``dec_keys`` hands keys out and erases
    them in one transaction (their bytes are zeroed in the row, the row goes when its last key has
    been delivered): a key is handed out once. Rows survive a restart.
``kme_requests``
    the journal of requests in flight between the two KMEs of a link: request id, link, peer node,
    role (``deliver``: this end drew the key; ``draw``: this end asked the peer to draw), SAEs, size,
    number of keys, the ranges once known, and a state: ``pending`` while the peer is being told,
    ``aborting`` once the request failed and the peer must be told to throw its half away. A request
    that completes leaves no row. At start-up every ``pending`` row becomes ``aborting`` (the SAE
    never got those keys).
``kme_aborted``
    request ids the peer aborted, remembered for a day, so that a ``deliver``, ``draw``, ``reserve`` or
    ``relay`` for one of them that arrives late (after the abort) is refused instead of creating keys
    nobody can ask for, and so that a relay that is still forwarding one of them stops.
``kme_pads``
    one-time pads a relay hop reserved at this end (the drawing end of the hop's PHYS link) and that
    the hop's ``relay`` op has not used yet: request id, link, the sender's node, the pad and when it
    was taken. The pad's bits are consumed (``kme:<request_id>``) in the same transaction, so a reserve
    survives a restart; a pad the relay op never comes for is erased after
    :data:`agent.kme.relay.RESERVE_TTL_S` and its bits recorded as discarded
    (:meth:`KmeStore.expire_pads`), as is one whose request is aborted.

Aborts along a relay path: every node of a VIRT link's path journals the request once, for its
outgoing hop (``peer`` = the next node), so an ``abort`` always travels downstream. A node that gets
one for its incoming hop (:meth:`KmeStore.abort_here_op`) discards what it consumed for the request on
*every* link and, when it consumed on other links than the aborted one (a relay's outgoing hop), marks
its own journal entry for the request ``aborting`` (creating it if the request had completed here),
so the abort loop carries the abort to the next node, and so on to the far end, which erases the
keys it kept. A relay still forwarding the request then finds it aborted (:meth:`KmeStore.finish`
returns False) and fails it.

Link key consumed for a request is recorded in the key store's accounting with the consumer
``kme:<request_id>`` at both ends, so a failed request is reclassified as *discarded* at both ends
(:meth:`agent.keystore.KeyStore.discard_consumed`), never silently lost.

Group commit: every operation is a function of a :class:`~agent.keystore.KeyStoreBatch`. Operations
queued during one turn of the event loop run together, on the loop thread, in one transaction; if one
of them raises, the transaction is rolled back and they run again, each in its own savepoint, so that
only the failing one is undone (savepoints cost two statements per operation, so they are taken only
then: operations act on the batch only and may run twice); the COMMIT then runs in a commit
thread, so its fsync never blocks the loop, while the operations queued meanwhile wait for the next
transaction. An operation's result is released only when its transaction is on disk. The KME has its
own SQLite connection, ``synchronous=FULL`` like the key store's: consumption is on disk before any
key is handed out, so a power cut can never make the KME hand out the same bits twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from agent.keystore import KeyRange, KeyStore, KeyStoreBatch, MissingBlockError, RangeConflictError
from agent.kme.etsi014 import KmeError, split_key_id
from qsdn.errors import KeyStoreError

__all__ = ["DivergenceError", "JournalEntry", "KmeStore", "digest", "split_keys", "tag"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_TABLES = (
    """CREATE TABLE IF NOT EXISTS kme_keys (
        request_id TEXT    PRIMARY KEY,
        qkdl_id    TEXT    NOT NULL,
        master_sae TEXT    NOT NULL,
        slave_sae  TEXT    NOT NULL,
        size_bits  INTEGER NOT NULL,
        count      INTEGER NOT NULL,
        remaining  INTEGER NOT NULL,
        waiting    BLOB    NOT NULL,
        keys       BLOB    NOT NULL,
        created    REAL    NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS kme_keys_pair ON kme_keys (master_sae, slave_sae)",
    """CREATE TABLE IF NOT EXISTS kme_requests (
        request_id TEXT    PRIMARY KEY,
        qkdl_id    TEXT    NOT NULL,
        peer       TEXT    NOT NULL,
        role       TEXT    NOT NULL CHECK (role IN ('deliver', 'draw')),
        master_sae TEXT    NOT NULL,
        slave_sae  TEXT    NOT NULL,
        size_bits  INTEGER NOT NULL,
        count      INTEGER NOT NULL,
        ranges     TEXT,
        state      TEXT    NOT NULL CHECK (state IN ('pending', 'aborting')),
        reason     TEXT,
        created    REAL    NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS kme_aborted (
        request_id TEXT    PRIMARY KEY,
        at         REAL    NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS kme_pads (
        request_id TEXT    NOT NULL,
        qkdl_id    TEXT    NOT NULL,
        peer       TEXT    NOT NULL,
        pad        BLOB    NOT NULL,
        created    REAL    NOT NULL,
        PRIMARY KEY (request_id, qkdl_id)
    ) WITHOUT ROWID""",
)

#: How long an aborted request id is remembered (a late deliver or draw for it is refused).
ABORTED_MEMORY_S = 86400.0


class DivergenceError(KeyStoreError):
    """The two ends of a link hold different bits for the same ranges."""


def tag(request_id: str) -> str:
    """The accounting consumer of a request's link key (the same at both ends)."""
    return f"kme:{request_id}"


def digest(request_id: str, qkdl_id: str, size: int, count: int, material: bytes) -> str:
    """SHA-256 commitment to a request's key material, compared by the two KMEs (never the keys).

    It travels only inside the mutual-TLS peer channel and covers the whole request (at least 64 bits
    of key, usually far more), bound to the request id, link, key size and number of keys.
    """
    h = hashlib.sha256(b"qsdn-kme-v1\x00")
    h.update(f"{request_id}\x00{qkdl_id}\x00{size}\x00{count}\x00".encode())
    h.update(material)
    return h.hexdigest()


def split_keys(material: bytes, size: int, count: int) -> list[bytes]:
    step = size // 8
    if len(material) != step * count:
        raise KeyStoreError(f"key material of {len(material)} bytes is not {count} keys of {size} bits")
    return [material[i * step : (i + 1) * step] for i in range(count)]


def ranges_json(ranges: Sequence[KeyRange]) -> str:
    return json.dumps([[r.block_id, r.offset_bits, r.nbits] for r in ranges])


@dataclass(frozen=True)
class JournalEntry:
    request_id: str
    qkdl_id: str
    peer: str
    role: str
    state: str
    reason: str | None
    ranges: tuple[KeyRange, ...] = ()


def _entry(row: Sequence[Any]) -> JournalEntry:
    rid, qkdl_id, peer, role, state, reason, ranges = row
    parsed = tuple(KeyRange(str(r[0]), int(r[1]), int(r[2])) for r in json.loads(ranges)) if ranges else ()
    return JournalEntry(str(rid), str(qkdl_id), str(peer), str(role), str(state), reason, parsed)


def _not_aborted(b: KeyStoreBatch, request_id: str) -> None:
    if b.execute("SELECT 1 FROM kme_aborted WHERE request_id = ?", (request_id,)).fetchone():
        raise RangeConflictError(f"request {request_id} was aborted by the peer")


def _discard_free(b: KeyStoreBatch, qkdl_id: str, consumer: str, ranges: Sequence[KeyRange]) -> int:
    """Use up as discarded those of ``ranges`` this store still holds free; the others are skipped."""
    n = 0
    for r in ranges:
        try:
            with b.savepoint():
                n += b.consume_ranges(qkdl_id, [r], consumer, discard=True).nbits
        except (MissingBlockError, RangeConflictError):
            continue
    return n


def _keep(
    b: KeyStoreBatch,
    *,
    request_id: str,
    qkdl_id: str,
    master: str,
    slave: str,
    size: int,
    keys: Sequence[bytes],
    max_waiting: int,
) -> None:
    """Keep a request's keys for their slave SAE."""
    waiting = int(
        b.execute(
            "SELECT COALESCE(SUM(remaining), 0) FROM kme_keys WHERE master_sae = ? AND slave_sae = ?",
            (master, slave),
        ).fetchone()[0]
    )
    if waiting + len(keys) > max_waiting:
        raise KmeError(
            503,
            f"keys not ready: {waiting} keys of {master} wait for {slave} to fetch them"
            f" (max_key_count {max_waiting})",
        )
    try:
        b.execute(
            "INSERT INTO kme_keys (request_id, qkdl_id, master_sae, slave_sae, size_bits, count, remaining,"
            " waiting, keys, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                request_id,
                qkdl_id,
                master,
                slave,
                size,
                len(keys),
                len(keys),
                b"\x01" * len(keys),
                b"".join(keys),
                b.at,
            ),
        )
    except Exception as exc:
        raise KeyStoreError(f"request {request_id}: its key_IDs are already in use") from exc


def _journal(
    b: KeyStoreBatch,
    *,
    request_id: str,
    qkdl_id: str,
    peer: str,
    role: str,
    master: str,
    slave: str,
    size: int,
    count: int,
    ranges: Sequence[KeyRange] | None,
) -> None:
    b.execute(
        "INSERT INTO kme_requests (request_id, qkdl_id, peer, role, master_sae, slave_sae, size_bits,"
        " count, ranges, state, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
        (
            request_id,
            qkdl_id,
            peer,
            role,
            master,
            slave,
            size,
            count,
            None if ranges is None else ranges_json(ranges),
            b.at,
        ),
    )


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


@dataclass
class _Op(Generic[T]):
    fn: Callable[[KeyStoreBatch], T]
    future: asyncio.Future[T]
    #: several operations (:meth:`KmeStore.call_many`): rerun carefully even when alone
    many: bool = False


class KmeStore:
    """KME tables in the key store file, with group commit; see the module docstring."""

    def __init__(self, path: Path, *, name: str = "kme") -> None:
        self.path = Path(path)
        self.name = name
        self._ks: KeyStore | None = None
        self._pending: list[_Op[Any]] = []
        self._scheduled = False
        self._committing: asyncio.Task[None] | None = None
        #: operations run each in its own savepoint (after one of the transaction's raised)
        self._careful = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.commits = 0
        self.operations = 0
        #: the adjacent node a PHYS link leads to (set by the relay logic), for aborts that go on
        #: along a relay path past a request this node had completed
        self.link_peer: Callable[[str], str | None] | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        ks = KeyStore(self.path, check_same_thread=False)
        try:
            with ks.batch("create the KME tables") as b:
                for ddl in _TABLES:
                    b.execute(ddl)
        except Exception:
            ks.close()
            raise
        self._ks = ks
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-commit")

    async def close(self) -> None:
        """Finish the operations already queued, then close."""
        while self._committing is not None or self._pending:
            if self._committing is not None:
                await asyncio.shield(self._committing)
            elif self._pending:
                self._flush()
        ks, self._ks = self._ks, None
        if ks is None:
            return
        ks.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        log.info("%s: %d operation(s) in %d transaction(s)", self.name, self.operations, self.commits)

    async def call(self, fn: Callable[[KeyStoreBatch], T], what: str) -> T:
        """Run ``fn`` in the next transaction (all or nothing on its own) and return its result once
        that transaction is on disk. ``what`` names the work in logs. ``fn`` must act on the batch only:
        when an operation of the transaction raises, the transaction is rolled back and every operation
        runs again, each in its own savepoint (see :meth:`_flush`)."""
        return await self._queue(fn, many=False)

    async def _queue(self, fn: Callable[[KeyStoreBatch], T], *, many: bool) -> T:
        if self._ks is None:
            raise KmeError(503, "the KME is stopping")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Op(fn, fut, many))
        if not self._scheduled and self._committing is None:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    async def call_many(self, fns: Sequence[Callable[[KeyStoreBatch], Any]], what: str) -> list[Any]:
        """Run several operations in one transaction, each all or nothing on its own; the result of each,
        or the exception it raised."""

        def op(b: KeyStoreBatch) -> list[Any]:
            if not self._careful:  # see _flush: a failure runs the transaction again, carefully
                return [fn(b) for fn in fns]
            out: list[Any] = []
            for fn in fns:
                try:
                    with b.savepoint():
                        out.append(fn(b))
                except Exception as exc:
                    out.append(exc)
            return out

        return await self._queue(op, many=True)

    # --- group commit -----------------------------------------------------------------------------
    def _flush(self) -> None:
        """Run every queued operation in one transaction on the loop thread, then commit it in the
        commit thread (the fsync never blocks the loop); operations queued meanwhile wait for the next
        transaction. Results are released only once the commit is durable."""
        self._scheduled = False
        ks = self._ks
        if self._committing is not None or not self._pending or ks is None:
            return
        ops, self._pending = self._pending, []
        what = f"{self.name}: {len(ops)} operation(s)"
        try:
            b = ks.begin(what)
        except KeyStoreError as exc:
            for op in ops:
                _settle(op.future, None, exc)
            return
        results: list[tuple[_Op[Any], Any, BaseException | None]]
        try:  # optimistic: no savepoints (two statements per operation) while nothing fails
            results = [(op, op.fn(b), None) for op in ops]
        except Exception as exc:
            with contextlib.suppress(KeyStoreError):
                ks.rollback()
            if len(ops) == 1 and not ops[0].many:
                _settle(ops[0].future, None, exc)
                self._after_commit()
                return
            # run them again, each in its own savepoint, so that the failing one is rolled back alone
            try:
                b = ks.begin(what)
            except KeyStoreError as exc2:
                for op in ops:
                    _settle(op.future, None, exc2)
                return
            self._careful = True
            try:
                results = []
                for op in ops:
                    try:
                        with b.savepoint():
                            r = op.fn(b)
                        results.append((op, r, None))
                    except Exception as exc3:
                        results.append((op, None, exc3))
            finally:
                self._careful = False
        # The COMMIT starts in the commit thread now, not when a task gets its turn: the transaction
        # holds the database's write lock, and a callback that runs on the loop meanwhile and writes to
        # the key store (the QKD driver storing a block) would otherwise wait on that lock with the loop
        # blocked, so the commit could never start ("database is locked").
        loop = asyncio.get_running_loop()
        commit = loop.run_in_executor(self._executor, ks.commit)
        self._committing = loop.create_task(self._commit(commit, results), name="kme-commit")

    async def _commit(
        self, commit: asyncio.Future[None], results: list[tuple[_Op[Any], Any, BaseException | None]]
    ) -> None:
        try:
            await commit
        except Exception as exc:
            log.error("%s: a transaction of %d operation(s) failed: %s", self.name, len(results), exc)
            results = [(op, None, exc) for op, _, _ in results]
        else:
            self.commits += 1
            self.operations += len(results)
        finally:
            self._committing = None
        for op, r, e in results:
            _settle(op.future, r, e)
        self._after_commit()

    def _after_commit(self) -> None:
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    # --- the master's end -------------------------------------------------------------------------
    async def draw_for_delivery(
        self, *, request_id: str, qkdl_id: str, peer: str, master: str, slave: str, size: int, count: int
    ) -> tuple[list[KeyRange], bytes]:
        """This end draws the key (``consume``) and journals the request before telling the peer."""

        def op(b: KeyStoreBatch) -> tuple[list[KeyRange], bytes]:
            _not_aborted(b, request_id)
            got = b.consume(qkdl_id, size * count, tag(request_id))
            _journal(
                b,
                request_id=request_id,
                qkdl_id=qkdl_id,
                peer=peer,
                role="deliver",
                master=master,
                slave=slave,
                size=size,
                count=count,
                ranges=got.ranges,
            )
            return got.ranges, got.key

        return await self.call(op, "draw key for delivery")

    async def journal_draw(
        self, *, request_id: str, qkdl_id: str, peer: str, master: str, slave: str, size: int, count: int
    ) -> None:
        """Journal a request before asking the peer to draw its key (so a crash can abort it)."""

        def op(b: KeyStoreBatch) -> None:
            _not_aborted(b, request_id)
            _journal(
                b,
                request_id=request_id,
                qkdl_id=qkdl_id,
                peer=peer,
                role="draw",
                master=master,
                slave=slave,
                size=size,
                count=count,
                ranges=None,
            )

        await self.call(op, "journal a draw request")

    async def finish(self, request_id: str) -> bool:
        """The request completed with the peer: forget its journal entry. False (and the entry stays)
        if the request was aborted meanwhile (an abort that came along a relay path): it must fail."""

        def op(b: KeyStoreBatch) -> bool:
            if b.execute("SELECT 1 FROM kme_aborted WHERE request_id = ?", (request_id,)).fetchone():
                return False
            b.execute("DELETE FROM kme_requests WHERE request_id = ? AND state = 'pending'", (request_id,))
            return True

        return await self.call(op, "finish a request")

    async def fail(
        self,
        request_id: str,
        qkdl_id: str,
        reason: str,
        *,
        abort_peer: bool = True,
        ranges: Sequence[KeyRange] | None = None,
    ) -> int:
        """The request failed: its link key here is recorded as discarded. With ``abort_peer`` the journal
        keeps the request as ``aborting`` (with the peer's ``ranges`` when known) until the peer has been
        told; without, it is forgotten. Returns the bits discarded here."""

        def op(b: KeyStoreBatch) -> int:
            n = b.discard_consumed(qkdl_id, tag(request_id))
            if not abort_peer:
                b.execute("DELETE FROM kme_requests WHERE request_id = ?", (request_id,))
                return n
            b.execute(
                "UPDATE kme_requests SET state = 'aborting', reason = ? WHERE request_id = ?",
                (reason[:500], request_id),
            )
            if ranges is not None:
                b.execute(
                    "UPDATE kme_requests SET ranges = ? WHERE request_id = ?",
                    (ranges_json(ranges), request_id),
                )
            return n

        return await self.call(op, "fail a request")

    # --- either end -------------------------------------------------------------------------------
    def apply_ranges_op(
        self,
        *,
        request_id: str,
        qkdl_id: str,
        ranges: Sequence[KeyRange],
        size: int,
        count: int,
        expect_digest: str,
        store_for: tuple[str, str] | None,
        max_waiting: int,
        finish_journal: bool,
    ) -> Callable[[KeyStoreBatch], list[bytes]]:
        """Consume exactly the peer's ranges, check the digest, and either keep the keys for the slave
        (``store_for`` = (master, slave)) or return them (the master is here). ``DivergenceError`` if
        the bits differ (nothing is consumed then; see :meth:`discard_ranges`)."""

        def op(b: KeyStoreBatch) -> list[bytes]:
            _not_aborted(b, request_id)
            got = b.consume_ranges(qkdl_id, ranges, tag(request_id))
            if got.nbits != size * count:
                raise RangeConflictError(
                    f"request {request_id}: the ranges hold {got.nbits} bits, {count} keys of {size} bits"
                    f" need {size * count}"
                )
            if digest(request_id, qkdl_id, size, count, got.key) != expect_digest:
                raise DivergenceError(
                    f"link {qkdl_id}: request {request_id}: the key material differs between the two ends"
                )
            keys = split_keys(got.key, size, count)
            if store_for is not None:
                _keep(
                    b,
                    request_id=request_id,
                    qkdl_id=qkdl_id,
                    master=store_for[0],
                    slave=store_for[1],
                    size=size,
                    keys=keys,
                    max_waiting=max_waiting,
                )
            if finish_journal:
                b.execute("DELETE FROM kme_requests WHERE request_id = ?", (request_id,))
            return keys

        return op

    async def apply_ranges(self, **kw: Any) -> list[bytes]:
        """:meth:`apply_ranges_op`, run now."""
        return await self.call(self.apply_ranges_op(**kw), "apply the peer's ranges")

    async def discard_ranges(self, *, request_id: str, qkdl_id: str, ranges: Sequence[KeyRange]) -> int:
        """Use up the peer's ranges of a request here as discarded (after a divergence); returns the bits."""

        def op(b: KeyStoreBatch) -> int:
            return _discard_free(b, qkdl_id, tag(request_id), ranges)

        return await self.call(op, "discard the peer's ranges")

    # --- the drawing end, for the peer's master -----------------------------------------------------
    @staticmethod
    def draw_and_keep_op(
        *, request_id: str, qkdl_id: str, master: str, slave: str, size: int, count: int, max_waiting: int
    ) -> Callable[[KeyStoreBatch], tuple[list[KeyRange], str]]:
        """The peer's master asked this end to draw: consume, keep the keys for the slave here, and
        return the ranges and digest for the peer."""

        def op(b: KeyStoreBatch) -> tuple[list[KeyRange], str]:
            _not_aborted(b, request_id)
            got = b.consume(qkdl_id, size * count, tag(request_id))
            _keep(
                b,
                request_id=request_id,
                qkdl_id=qkdl_id,
                master=master,
                slave=slave,
                size=size,
                keys=split_keys(got.key, size, count),
                max_waiting=max_waiting,
            )
            return got.ranges, digest(request_id, qkdl_id, size, count, got.key)

        return op

    # --- the slave's end --------------------------------------------------------------------------
    async def take(self, master: str, slave: str, key_ids: Sequence[str]) -> list[bytes]:
        """``dec_keys``: hand out and erase the keys, all or none."""

        def op(b: KeyStoreBatch) -> list[bytes]:
            wanted: list[tuple[str, int] | None] = [split_key_id(k) for k in key_ids]
            requests = sorted({w[0] for w in wanted if w is not None})
            rows: dict[str, tuple[int, int, int, bytearray, bytearray]] = {}
            if requests:
                marks = ",".join("?" * len(requests))  # only placeholders go into the statement
                cols = "request_id, size_bits, count, remaining, waiting, keys"
                where = f"request_id IN ({marks}) AND master_sae = ? AND slave_sae = ?"
                sql = f"SELECT {cols} FROM kme_keys WHERE {where}"  # noqa: S608
                for rid, size, count, remaining, waiting, keys in b.execute(sql, (*requests, master, slave)):
                    rows[str(rid)] = (
                        int(size),
                        int(count),
                        int(remaining),
                        bytearray(waiting),
                        bytearray(keys),
                    )
            missing = [
                k
                for k, w in zip(key_ids, wanted, strict=True)
                if w is None or w[0] not in rows or w[1] >= rows[w[0]][1] or not rows[w[0]][3][w[1]]
            ]
            if missing:
                raise KmeError(
                    400,
                    f"key_ID {missing[0]} is unknown or already delivered",
                    [{"key_ID": k, "reason": "unknown or already delivered"} for k in missing],
                )
            out: list[bytes] = []
            taken: dict[str, int] = {}
            for w in wanted:
                assert w is not None
                rid, i = w
                size, _count, _remaining, waiting, keys = rows[rid]
                step = size // 8
                out.append(bytes(keys[i * step : (i + 1) * step]))
                keys[i * step : (i + 1) * step] = bytes(step)
                waiting[i] = 0
                taken[rid] = taken.get(rid, 0) + 1
            for rid, n in taken.items():
                _size, _count, remaining, waiting, keys = rows[rid]
                if remaining == n:
                    b.execute("DELETE FROM kme_keys WHERE request_id = ?", (rid,))
                else:
                    b.execute(
                        "UPDATE kme_keys SET remaining = ?, waiting = ?, keys = ? WHERE request_id = ?",
                        (remaining - n, bytes(waiting), bytes(keys), rid),
                    )
            return out

        return await self.call(op, "deliver keys")

    # --- aborts -----------------------------------------------------------------------------------
    def abort_here_op(
        self, request_id: str, qkdl_id: str, ranges: Sequence[KeyRange]
    ) -> Callable[[KeyStoreBatch], tuple[int, int, list[KeyRange]]]:
        """The peer aborted a request: erase its undelivered keys and reserved pads here, record the
        link key this end consumed for it (on every link) as discarded, and use up as discarded what the
        peer names in ``ranges`` that is still free here. If this node passed the request on over
        another link (a relay), its journal entry for it becomes ``aborting``: the abort goes on to the
        next node (see the module docstring).

        Returns (keys erased, bits discarded on ``qkdl_id``, the ranges this end consumed for the
        request on ``qkdl_id``). Idempotent."""
        link_peer = self.link_peer

        def op(b: KeyStoreBatch) -> tuple[int, int, list[KeyRange]]:
            consumer = tag(request_id)
            b.execute("DELETE FROM kme_aborted WHERE at < ?", (b.at - ABORTED_MEMORY_S,))
            b.execute("INSERT OR IGNORE INTO kme_aborted (request_id, at) VALUES (?, ?)", (request_id, b.at))
            row = b.execute(
                "SELECT COALESCE(SUM(remaining), 0) FROM kme_keys WHERE request_id = ?", (request_id,)
            ).fetchone()
            b.execute("DELETE FROM kme_keys WHERE request_id = ?", (request_id,))
            b.execute("DELETE FROM kme_pads WHERE request_id = ?", (request_id,))
            bits = b.discard_consumed(qkdl_id, consumer)
            bits += _discard_free(b, qkdl_id, consumer, ranges)
            # the other links this node took key from for the request: a relay's outgoing hop
            others = [
                str(r[0])
                for r in b.execute(
                    "SELECT DISTINCT qkdl_id FROM accounting WHERE consumer = ? AND qkdl_id != ?",
                    (consumer, qkdl_id),
                ).fetchall()
            ]
            journal = b.execute(
                "SELECT qkdl_id FROM kme_requests WHERE request_id = ?", (request_id,)
            ).fetchone()
            if journal is not None and str(journal[0]) != qkdl_id:
                b.discard_consumed(str(journal[0]), consumer)
                b.execute(
                    "UPDATE kme_requests SET state = 'aborting', reason = ? WHERE request_id = ?",
                    (f"aborted upstream over link {qkdl_id}", request_id),
                )
            for other in others:
                b.discard_consumed(other, consumer)
                peer = link_peer(other) if link_peer is not None else None
                if journal is None and peer is not None:
                    _journal(
                        b,
                        request_id=request_id,
                        qkdl_id=other,
                        peer=peer,
                        role="deliver",
                        master="",
                        slave="",
                        size=0,
                        count=0,
                        ranges=b.ranges_of(other, consumer),
                    )
                    b.execute(
                        "UPDATE kme_requests SET state = 'aborting', reason = ? WHERE request_id = ?",
                        (f"aborted upstream over link {qkdl_id}", request_id),
                    )
                    journal = (other,)
            return int(row[0]), bits, b.ranges_of(qkdl_id, consumer)

        return op

    async def settle_abort(self, request_id: str, qkdl_id: str, peer_ranges: Sequence[KeyRange]) -> int:
        """The peer acknowledged an abort: use up as discarded what it consumed for the request that is
        still free here, and forget the request. Returns the bits discarded."""

        def op(b: KeyStoreBatch) -> int:
            n = _discard_free(b, qkdl_id, tag(request_id), peer_ranges)
            b.execute("DELETE FROM kme_requests WHERE request_id = ?", (request_id,))
            return n

        return await self.call(op, "settle an abort")

    # --- relay pads -------------------------------------------------------------------------------
    async def reserve_pad(
        self, *, request_id: str, qkdl_id: str, peer: str, bits: int
    ) -> tuple[list[KeyRange], bytes]:
        """Take a relay hop's pad at the drawing end and keep it (on disk) for the hop's relay op."""

        def op(b: KeyStoreBatch) -> tuple[list[KeyRange], bytes]:
            _not_aborted(b, request_id)
            got = b.consume(qkdl_id, bits, tag(request_id))
            b.execute(
                "INSERT INTO kme_pads (request_id, qkdl_id, peer, pad, created) VALUES (?, ?, ?, ?, ?)",
                (request_id, qkdl_id, peer, got.key, b.at),
            )
            return got.ranges, got.key

        return await self.call(op, "reserve a relay pad")

    async def take_pad(self, request_id: str, qkdl_id: str, peer: str) -> bytes | None:
        """The pad reserved for a hop (erased here as it is taken); None if there is none (expired,
        aborted, never reserved, or reserved for another sender)."""

        def op(b: KeyStoreBatch) -> bytes | None:
            row = b.execute(
                "SELECT pad FROM kme_pads WHERE request_id = ? AND qkdl_id = ? AND peer = ?",
                (request_id, qkdl_id, peer),
            ).fetchone()
            if row is None:
                return None
            b.execute("DELETE FROM kme_pads WHERE request_id = ? AND qkdl_id = ?", (request_id, qkdl_id))
            return bytes(row[0])

        return await self.call(op, "take a relay pad")

    async def expire_pads(self, older_than_s: float) -> int:
        """Erase the pads reserved more than ``older_than_s`` ago whose relay op never came; their bits
        are recorded as discarded. Returns the bits."""

        def op(b: KeyStoreBatch) -> int:
            rows = b.execute(
                "SELECT request_id, qkdl_id FROM kme_pads WHERE created < ?", (b.at - older_than_s,)
            ).fetchall()
            n = 0
            for rid, qkdl_id in rows:
                n += b.discard_consumed(str(qkdl_id), tag(str(rid)))
                b.execute("DELETE FROM kme_pads WHERE request_id = ? AND qkdl_id = ?", (rid, qkdl_id))
            return n

        return await self.call(op, "expire relay pads")

    async def pads(self) -> int:
        """Reserved pads waiting for their relay op."""
        return await self.call(
            lambda b: int(b.execute("SELECT COUNT(*) FROM kme_pads").fetchone()[0]), "count relay pads"
        )

    # --- removed applications -----------------------------------------------------------------------
    async def purge(self, keep: Callable[[str, str], bool], stale_before: float) -> tuple[int, int]:
        """Erase the keys waiting for slaves whose (master, slave) pair ``keep`` rejects (its
        application is gone) and record their bits as discarded; close the journal entries of such
        pairs created before ``stale_before`` (wall clock; requests no longer in flight) as ``aborting``,
        so the peer discards its half too. Returns (keys erased, bits discarded)."""

        def op(b: KeyStoreBatch) -> tuple[int, int]:
            erased = bits = 0
            for rid, qkdl_id, master, slave, remaining in b.execute(
                "SELECT request_id, qkdl_id, master_sae, slave_sae, remaining FROM kme_keys"
            ).fetchall():
                if keep(str(master), str(slave)):
                    continue
                b.execute("DELETE FROM kme_keys WHERE request_id = ?", (rid,))
                erased += int(remaining)
                bits += b.discard_consumed(str(qkdl_id), tag(str(rid)))
            for rid, qkdl_id, master, slave in b.execute(
                "SELECT request_id, qkdl_id, master_sae, slave_sae FROM kme_requests"
                " WHERE state = 'pending' AND created < ? AND master_sae != ''",
                (stale_before,),
            ).fetchall():
                if keep(str(master), str(slave)):
                    continue
                bits += b.discard_consumed(str(qkdl_id), tag(str(rid)))
                b.execute(
                    "UPDATE kme_requests SET state = 'aborting', reason = ? WHERE request_id = ?",
                    ("the application was removed", rid),
                )
            return erased, bits

        return await self.call(op, "purge the keys of removed applications")

    async def recover(self) -> list[JournalEntry]:
        """At start-up: requests left ``pending`` failed (their SAE never got the keys); record their
        link key as discarded and mark them ``aborting``. Returns every entry to abort at the peer."""

        def op(b: KeyStoreBatch) -> list[JournalEntry]:
            for rid, qkdl_id in b.execute(
                "SELECT request_id, qkdl_id FROM kme_requests WHERE state = 'pending'"
            ).fetchall():
                b.discard_consumed(str(qkdl_id), tag(str(rid)))
            b.execute(
                "UPDATE kme_requests SET state = 'aborting', reason = ? WHERE state = 'pending'",
                ("the KME stopped before the request completed",),
            )
            return self._aborting(b)

        return await self.call(op, "recover the journal")

    @staticmethod
    def _aborting(b: KeyStoreBatch) -> list[JournalEntry]:
        rows = b.execute(
            "SELECT request_id, qkdl_id, peer, role, state, reason, ranges FROM kme_requests"
            " WHERE state = 'aborting' ORDER BY created"
        ).fetchall()
        return [_entry(r) for r in rows]

    async def aborting(self) -> list[JournalEntry]:
        """Requests whose peer still has to be told they failed."""
        return await self.call(self._aborting, "list aborting requests")

    async def waiting_keys(self, master: str | None = None, slave: str | None = None) -> int:
        """Keys stored here and not yet delivered (optionally for one pair)."""

        def op(b: KeyStoreBatch) -> int:
            if master is None:
                return int(b.execute("SELECT COALESCE(SUM(remaining), 0) FROM kme_keys").fetchone()[0])
            return int(
                b.execute(
                    "SELECT COALESCE(SUM(remaining), 0) FROM kme_keys WHERE master_sae = ? AND slave_sae = ?",
                    (master, slave),
                ).fetchone()[0]
            )

        return await self.call(op, "count waiting keys")
