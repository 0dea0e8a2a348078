"""Persistent per-link key store on SQLite.

A QKD link delivers key in *blocks*: each block has an identifier that both ends of the link share and a
whole number of bytes. The store keeps, per link (``qkdl_id``):

* the blocks, with the offset (in bits) up to which each has been consumed;
* an accounting table with one row for every consumed or discarded range of bits: link, block, offset,
  length, who/why, and a wall-clock timestamp. No bit leaves the store without a row there.

Consumption order is deterministic and shared by both ends: blocks are consumed in ascending ``block_id``
order, each from its first unconsumed bit. Two stores that hold the same blocks and serve the same sequence
of requests therefore return the same bits, whatever order the blocks arrived in. Drivers must issue block
ids that sort in generation order (the emulated driver does) so that the oldest key is used first.

Ranges consumed out of order: the far end of a link does not choose what it consumes; it is told which
ranges the near end took (:meth:`KeyStore.consume_ranges`), and concurrent requests may announce them in
any order. A block therefore has a *frontier* (``consumed_bits``: every bit before it is consumed) and, in
the ``taken`` table, the ranges consumed beyond the frontier, adjacent ones merged into one row.
:meth:`KeyStore.consume` skips taken ranges, so both kinds of consumption mix safely. Consumption only
writes ``taken`` (one small row per request, usually an update of the block's first range) until the
block's last bit is consumed: then ``consumed_bits`` becomes ``bits`` and the key is erased. The block's
own row, which holds its key (up to 64 KiB), is not rewritten for every request, and a request's bits
are read from it with incremental blob I/O (so ``blocks`` is a rowid table, schema version 2; version 1
stores are upgraded when opened).

Batches: :meth:`KeyStore.batch` runs several operations, and statements on tables of the caller's own
(the ETSI 014 KME keeps its key records next to the blocks), in one transaction, so that consuming key
and recording what it became commit together or not at all.

Key material hygiene: a block whose last bit is consumed loses its bytes (the row stays as a tombstone so
a late duplicate of the block is recognised and not stored again); ``PRAGMA secure_delete`` makes SQLite
overwrite freed content. Partially consumed blocks keep their bytes until their last bit is used. No key
byte is ever logged, and ``repr`` shows counts only.

Concurrency: one connection, used from the thread that created it (the agent's event loop thread). Every
operation is a single short transaction, so calling it from a coroutine does not stall the loop noticeably.
The database runs in WAL mode.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from qsdn.errors import KeyStoreError

__all__ = [
    "BlockInfo",
    "ConsumedKey",
    "ConsumptionRecord",
    "KeyRange",
    "KeyStore",
    "KeyStoreBatch",
    "MissingBlockError",
    "RangeConflictError",
]

logger = logging.getLogger(__name__)

_SCHEMA_VERSION = 2

#: Version 2 made ``blocks`` a rowid table (version 1: ``WITHOUT ROWID``), so that a request's bits are
#: read from a block's key with incremental blob I/O, and moving its frontier does not copy its key: a
#: block is up to 64 KiB, a request often 256 bits.
_BLOCKS = """CREATE TABLE IF NOT EXISTS blocks (
    qkdl_id       TEXT    NOT NULL,
    block_id      TEXT    NOT NULL,
    bits          INTEGER NOT NULL CHECK (bits > 0),
    consumed_bits INTEGER NOT NULL DEFAULT 0 CHECK (consumed_bits BETWEEN 0 AND bits),
    key           BLOB,
    added_at      REAL    NOT NULL,
    PRIMARY KEY (qkdl_id, block_id)
)"""

_MIGRATE_1_TO_2 = (
    "ALTER TABLE blocks RENAME TO blocks_v1",
    "DROP INDEX IF EXISTS blocks_live",
    _BLOCKS,
    "INSERT INTO blocks (qkdl_id, block_id, bits, consumed_bits, key, added_at)"
    " SELECT qkdl_id, block_id, bits, consumed_bits, key, added_at FROM blocks_v1 ORDER BY qkdl_id, block_id",
    "DROP TABLE blocks_v1",  # secure_delete overwrites its pages
)

_SCHEMA = (
    _BLOCKS
    + """;
CREATE TABLE IF NOT EXISTS accounting (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    qkdl_id     TEXT    NOT NULL,
    block_id    TEXT    NOT NULL,
    offset_bits INTEGER NOT NULL,
    nbits       INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('consumed', 'discarded')),
    consumer    TEXT    NOT NULL,
    at          REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS accounting_link ON accounting (qkdl_id, kind);
CREATE INDEX IF NOT EXISTS accounting_consumer ON accounting (consumer);
CREATE INDEX IF NOT EXISTS blocks_live ON blocks (qkdl_id, block_id, bits, consumed_bits)
    WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS taken (
    qkdl_id     TEXT    NOT NULL,
    block_id    TEXT    NOT NULL,
    offset_bits INTEGER NOT NULL,
    nbits       INTEGER NOT NULL CHECK (nbits > 0),
    PRIMARY KEY (qkdl_id, block_id, offset_bits)
) WITHOUT ROWID;
"""
)


class MissingBlockError(KeyStoreError):
    """A range names a block this store does not hold (yet): the other end may not have delivered it."""


class RangeConflictError(KeyStoreError):
    """A range was already consumed, lies outside its block or overlaps another range of the request."""


class KeyRange(NamedTuple):
    """A range of bits of one block: ``nbits`` bits from bit ``offset_bits`` (MSB first)."""

    block_id: str
    offset_bits: int
    nbits: int


class BlockInfo(NamedTuple):
    """A block that still holds key: its id and its size in bits."""

    block_id: str
    bits: int


@dataclass(frozen=True, slots=True)
class ConsumedKey:
    """The result of :meth:`KeyStore.consume`: the ranges taken, in order, and their bits packed MSB first.

    ``key`` holds ``ceil(nbits / 8)`` bytes; when ``nbits`` is not a multiple of 8 the last byte is padded
    with zero bits. ``repr`` never shows the key.
    """

    ranges: list[KeyRange]
    nbits: int
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ConsumptionRecord:
    """One row of the accounting table."""

    qkdl_id: str
    block_id: str
    offset_bits: int
    nbits: int
    kind: str
    consumer: str
    at: float


def _check_id(what: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise KeyStoreError(f"{what} must be a non-empty string of at most 256 characters, got {value!r}")


def _extract_bits(data: bytes, offset_bits: int, nbits: int) -> int:
    """Bits ``[offset_bits, offset_bits + nbits)`` of ``data`` (MSB first) as an integer."""
    total = len(data) * 8
    value = int.from_bytes(data, "big")
    return (value >> (total - offset_bits - nbits)) & ((1 << nbits) - 1)


def _free_intervals(bits: int, frontier: int, taken: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The unconsumed ``(offset, nbits)`` intervals of a block, in bit order."""
    out: list[tuple[int, int]] = []
    pos = frontier
    for off, n in sorted(taken):
        if off > pos:
            out.append((pos, off - pos))
        pos = max(pos, off + n)
    if pos < bits:
        out.append((pos, bits - pos))
    return out


def _check_nbits(qkdl_id: str, nbits: object) -> int:
    if isinstance(nbits, bool) or not isinstance(nbits, int) or nbits <= 0:
        raise KeyStoreError(f"link {qkdl_id}: number of bits to consume must be a positive integer")
    return nbits


class KeyStoreBatch:
    """Operations inside one open transaction of a :class:`KeyStore` (see :meth:`KeyStore.batch`).

    Valid only inside the ``with`` block that created it, on the thread that owns the store.
    """

    def __init__(self, conn: sqlite3.Connection, at: float) -> None:
        self._conn = conn
        self.at = at
        self._savepoints = 0

    # -- caller's own statements --------------------------------------------------------------------

    def execute(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Cursor:
        """Run one SQL statement in the batch's transaction (for the caller's own tables)."""
        return self._conn.execute(sql, tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        self._conn.executemany(sql, rows)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested all-or-nothing step: an exception rolls back what the step did, and propagates."""
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        self._conn.execute(f"RELEASE {name}")

    # -- consumption --------------------------------------------------------------------------------

    def _taken(self, qkdl_id: str, block_id: str | None = None) -> dict[str, list[tuple[int, int]]]:
        if block_id is None:
            rows = self._conn.execute(
                "SELECT block_id, offset_bits, nbits FROM taken WHERE qkdl_id = ?", (qkdl_id,)
            ).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT block_id, offset_bits, nbits FROM taken WHERE qkdl_id = ? AND block_id = ?",
                (qkdl_id, block_id),
            ).fetchall()
        out: dict[str, list[tuple[int, int]]] = {}
        for b, off, n in rows:
            out.setdefault(str(b), []).append((int(off), int(n)))
        return out

    def _bits(self, rowid: int, offset_bits: int, nbits: int) -> int:
        """Bits of the stored block in row ``rowid``, reading only the bytes that hold them."""
        first = offset_bits // 8
        nbytes = (offset_bits % 8 + nbits + 7) // 8
        with self._conn.blobopen("blocks", "key", rowid, readonly=True) as blob:
            blob.seek(first)
            chunk = blob.read(nbytes)
        return _extract_bits(chunk, offset_bits % 8, nbits)

    def _mark(
        self,
        qkdl_id: str,
        block_id: str,
        bits: int,
        frontier: int,
        existing: Sequence[tuple[int, int]],
        new: Sequence[tuple[int, int]],
    ) -> None:
        """Record ``new`` ranges of a block as consumed, in ``taken`` with adjacent ranges merged (one
        small row to update per request; the block's own row, which holds its key, is written only when
        the block is used up)."""
        merged: list[tuple[int, int]] = []
        for off, n in sorted([*existing, *new]):
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((off, n))
        conn = self._conn
        if merged == [(frontier, bits - frontier)]:
            conn.execute(
                "UPDATE blocks SET consumed_bits = bits, key = NULL WHERE qkdl_id = ? AND block_id = ?",
                (qkdl_id, block_id),
            )
            if existing:
                conn.execute("DELETE FROM taken WHERE qkdl_id = ? AND block_id = ?", (qkdl_id, block_id))
            return
        have = dict(existing)
        keep = dict(merged)
        for off, n in merged:
            if off not in have:
                conn.execute(
                    "INSERT INTO taken (qkdl_id, block_id, offset_bits, nbits) VALUES (?, ?, ?, ?)",
                    (qkdl_id, block_id, off, n),
                )
            elif have[off] != n:
                conn.execute(
                    "UPDATE taken SET nbits = ? WHERE qkdl_id = ? AND block_id = ? AND offset_bits = ?",
                    (n, qkdl_id, block_id, off),
                )
        for off in have:
            if off not in keep:
                conn.execute(
                    "DELETE FROM taken WHERE qkdl_id = ? AND block_id = ? AND offset_bits = ?",
                    (qkdl_id, block_id, off),
                )

    def _account(self, qkdl_id: str, ranges: Sequence[KeyRange], kind: str, consumer: str) -> None:
        self._conn.executemany(
            "INSERT INTO accounting (qkdl_id, block_id, offset_bits, nbits, kind, consumer, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(qkdl_id, r.block_id, r.offset_bits, r.nbits, kind, consumer, self.at) for r in ranges],
        )

    def consume(self, qkdl_id: str, nbits: int, consumer: str = "unspecified") -> ConsumedKey:
        """:meth:`KeyStore.consume` inside this batch."""
        _check_id("qkdl_id", qkdl_id)
        _check_nbits(qkdl_id, nbits)
        taken = self._taken(qkdl_id)
        plan: list[tuple[int, str, int, int, list[tuple[int, int]]]] = []
        remaining = nbits
        cur = self._conn.execute(
            "SELECT rowid, block_id, bits, consumed_bits FROM blocks"
            " WHERE qkdl_id = ? AND key IS NOT NULL ORDER BY block_id",
            (qkdl_id,),
        )
        try:
            for rowid, block_id, bits, used in cur:
                take: list[tuple[int, int]] = []
                for off, n in _free_intervals(bits, used, taken.get(block_id, ())):
                    t = min(n, remaining)
                    take.append((off, t))
                    remaining -= t
                    if remaining == 0:
                        break
                if take:
                    plan.append((int(rowid), str(block_id), int(bits), int(used), take))
                if remaining == 0:
                    break
        finally:
            cur.close()
        if remaining > 0:
            raise KeyStoreError(
                f"link {qkdl_id}: not enough key: {nbits} bits requested, {nbits - remaining} available"
            )
        ranges: list[KeyRange] = []
        acc = 0
        for rowid, block_id, bits, used, take in plan:
            for off, n in take:
                acc = (acc << n) | self._bits(rowid, off, n)
                ranges.append(KeyRange(block_id, off, n))
            self._mark(qkdl_id, block_id, bits, used, taken.get(block_id, ()), take)
        self._account(qkdl_id, ranges, "consumed", consumer)
        return ConsumedKey(ranges=ranges, nbits=nbits, key=_pack(acc, nbits))

    def consume_ranges(
        self, qkdl_id: str, ranges: Sequence[KeyRange], consumer: str, *, discard: bool = False
    ) -> ConsumedKey:
        """:meth:`KeyStore.consume_ranges` inside this batch."""
        _check_id("qkdl_id", qkdl_id)
        if not ranges:
            raise KeyStoreError(f"link {qkdl_id}: no ranges to consume")
        wanted: dict[str, list[tuple[int, int]]] = {}
        for raw in ranges:
            r = KeyRange(*raw)
            _check_id("block_id", r.block_id)
            if isinstance(r.offset_bits, bool) or not isinstance(r.offset_bits, int) or r.offset_bits < 0:
                raise RangeConflictError(f"link {qkdl_id}: block {r.block_id}: bad range offset")
            _check_nbits(qkdl_id, r.nbits)
            wanted.setdefault(r.block_id, []).append((r.offset_bits, r.nbits))
        blocks: dict[str, tuple[int, int, list[tuple[int, int]]]] = {}
        rowids: dict[str, int] = {}
        for block_id, spans in wanted.items():
            row = self._conn.execute(
                "SELECT bits, consumed_bits, length(key) IS NULL, rowid FROM blocks"
                " WHERE qkdl_id = ? AND block_id = ?",
                (qkdl_id, block_id),
            ).fetchone()
            if row is None:
                raise MissingBlockError(f"link {qkdl_id}: block {block_id} is not in this key store")
            bits, frontier, used_up = int(row[0]), int(row[1]), bool(row[2])
            rowids[block_id] = int(row[3])
            if used_up:
                raise RangeConflictError(f"link {qkdl_id}: block {block_id} is already used up")
            existing = self._taken(qkdl_id, block_id).get(block_id, [])
            prev_end = -1
            for off, n in sorted(spans):
                if off + n > bits:
                    raise RangeConflictError(
                        f"link {qkdl_id}: block {block_id}: range {off}+{n} lies outside its {bits} bits"
                    )
                if off < frontier or any(off < e_off + e_n and e_off < off + n for e_off, e_n in existing):
                    raise RangeConflictError(
                        f"link {qkdl_id}: block {block_id}: range {off}+{n} was already consumed"
                    )
                if off < prev_end:
                    raise RangeConflictError(
                        f"link {qkdl_id}: block {block_id}: the requested ranges overlap at bit {off}"
                    )
                prev_end = off + n
            blocks[block_id] = (bits, frontier, existing)
        acc = 0
        nbits = 0
        norm: list[KeyRange] = []
        for r in ranges:
            block_id, off, n = r[0], r[1], r[2]
            acc = (acc << n) | self._bits(rowids[block_id], off, n)
            nbits += n
            norm.append(KeyRange(block_id, off, n))
        for block_id, (bits, frontier, existing) in blocks.items():
            self._mark(qkdl_id, block_id, bits, frontier, existing, wanted[block_id])
        self._account(qkdl_id, norm, "discarded" if discard else "consumed", consumer)
        return ConsumedKey(ranges=norm, nbits=nbits, key=_pack(acc, nbits))

    def discard_consumed(self, qkdl_id: str, consumer: str) -> int:
        """:meth:`KeyStore.discard_consumed` inside this batch."""
        _check_id("qkdl_id", qkdl_id)
        row = self._conn.execute(
            "SELECT COALESCE(SUM(nbits), 0) FROM accounting"
            " WHERE consumer = ? AND qkdl_id = ? AND kind = 'consumed'",
            (consumer, qkdl_id),
        ).fetchone()
        self._conn.execute(
            "UPDATE accounting SET kind = 'discarded'"
            " WHERE consumer = ? AND qkdl_id = ? AND kind = 'consumed'",
            (consumer, qkdl_id),
        )
        return int(row[0])

    def ranges_of(self, qkdl_id: str, consumer: str) -> list[KeyRange]:
        """:meth:`KeyStore.ranges_of` inside this batch."""
        rows = self._conn.execute(
            "SELECT block_id, offset_bits, nbits FROM accounting"
            " WHERE consumer = ? AND qkdl_id = ? ORDER BY id",
            (consumer, qkdl_id),
        ).fetchall()
        return [KeyRange(str(b), int(o), int(n)) for b, o, n in rows]


def _pack(acc: int, nbits: int) -> bytes:
    pad = (-nbits) % 8
    return (acc << pad).to_bytes((nbits + pad) // 8, "big")


class KeyStore:
    """Per-link key blocks and the accounting of their consumption, persisted in one SQLite file."""

    def __init__(
        self, path: Path, *, now: Callable[[], float] = time.time, check_same_thread: bool = True
    ) -> None:
        """Open (creating if needed) the store at ``path``.

        ``check_same_thread=False`` lets another thread finish a transaction opened with :meth:`begin`
        (the caller serialises all use of the store).
        """
        self._path = Path(path)
        self._now = now
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # Key material: the database (and SQLite's -wal/-shm files, which take its mode) is
            # readable by the agent's user only, whatever the umask.
            os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self._path, 0o600)
            conn = sqlite3.connect(
                self._path, isolation_level=None, timeout=5.0, check_same_thread=check_same_thread
            )
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreError(f"cannot open key store {self._path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version not in (0, 1, _SCHEMA_VERSION):
                    raise KeyStoreError(
                        f"key store {self._path} has schema version {version}, expected {_SCHEMA_VERSION}"
                    )
                if version == 1:
                    for sql in _MIGRATE_1_TO_2:
                        conn.execute(sql)
                    logger.info("key store %s: schema upgraded from version 1 to 2", self._path)
                for sql in _SCHEMA.split(";"):
                    if sql.strip():
                        conn.execute(sql)
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            conn.close()
            self._conn = None
            raise KeyStoreError(f"cannot initialise key store {self._path}: {exc}") from exc
        except KeyStoreError:
            conn.close()
            self._conn = None
            raise
        logger.debug("key store %s opened", self._path)

    # -- plumbing -----------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def closed(self) -> bool:
        return self._conn is None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise KeyStoreError(f"key store {self._path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise KeyStoreError(f"key store {self._path}: cannot {what}: {exc}") from exc
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise KeyStoreError(f"key store {self._path}: cannot {what}: {exc}") from exc

    def _query(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise KeyStoreError(f"key store {self._path}: query failed: {exc}") from exc

    # -- blocks -------------------------------------------------------------------------------------

    def add_block(self, qkdl_id: str, block_id: str, key: bytes) -> bool:
        """Store a block of key for a link. Returns True if stored, False if the block was already known.

        Idempotent: adding a block id again with the same bytes (or after the block was used up) does
        nothing. The same id with different bytes is a :class:`KeyStoreError`: the two ends disagree.
        """
        _check_id("qkdl_id", qkdl_id)
        _check_id("block_id", block_id)
        if not isinstance(key, bytes | bytearray) or not key:
            raise KeyStoreError(f"link {qkdl_id}: block {block_id} must be non-empty bytes")
        data = bytes(key)
        with self._transaction(f"add block {block_id} to link {qkdl_id}") as conn:
            row = conn.execute(
                "SELECT key, bits FROM blocks WHERE qkdl_id = ? AND block_id = ?", (qkdl_id, block_id)
            ).fetchone()
            if row is not None:
                stored, bits = row
                if stored is None:
                    if bits != len(data) * 8:
                        raise KeyStoreError(
                            f"link {qkdl_id}: block {block_id} was already used up and had another size"
                        )
                    logger.debug("link %s: block %s already used up, duplicate ignored", qkdl_id, block_id)
                    return False
                if bytes(stored) != data:
                    raise KeyStoreError(
                        f"link {qkdl_id}: block {block_id} already stored with different key material"
                    )
                return False
            conn.execute(
                "INSERT INTO blocks (qkdl_id, block_id, bits, consumed_bits, key, added_at)"
                " VALUES (?, ?, ?, 0, ?, ?)",
                (qkdl_id, block_id, len(data) * 8, data, self._now()),
            )
        return True

    def stored_bits(self, qkdl_id: str) -> int:
        """Bits of key available (stored and not yet consumed) for a link."""
        rows = self._query(
            "SELECT COALESCE(SUM(bits - consumed_bits), 0) FROM blocks WHERE qkdl_id = ? AND key IS NOT NULL",
            (qkdl_id,),
        )
        taken = self._query("SELECT COALESCE(SUM(nbits), 0) FROM taken WHERE qkdl_id = ?", (qkdl_id,))
        return int(rows[0][0]) - int(taken[0][0])

    def blocks(self, qkdl_id: str) -> list[BlockInfo]:
        """The blocks of a link that still hold key, in consumption order (ascending ``block_id``)."""
        rows = self._query(
            "SELECT block_id, bits FROM blocks WHERE qkdl_id = ? AND key IS NOT NULL ORDER BY block_id",
            (qkdl_id,),
        )
        return [BlockInfo(str(b), int(n)) for b, n in rows]

    def get_block(self, qkdl_id: str, block_id: str) -> bytes:
        """The bytes of a block that still holds key (including any consumed leading bits)."""
        rows = self._query("SELECT key FROM blocks WHERE qkdl_id = ? AND block_id = ?", (qkdl_id, block_id))
        if not rows:
            raise KeyStoreError(f"link {qkdl_id}: no block {block_id}")
        key = rows[0][0]
        if key is None:
            raise KeyStoreError(f"link {qkdl_id}: block {block_id} is used up")
        return bytes(key)

    def links(self) -> list[str]:
        """Links that have blocks in the store (including used-up blocks), sorted."""
        rows = self._query("SELECT DISTINCT qkdl_id FROM blocks ORDER BY qkdl_id", ())
        return [str(r[0]) for r in rows]

    # -- consumption --------------------------------------------------------------------------------

    def consume(self, qkdl_id: str, nbits: int, consumer: str = "unspecified") -> ConsumedKey:
        """Take the next ``nbits`` bits of a link's key, record them in the accounting, and return them.

        ``consumer`` says who takes the key and why (for the audit trail). All or nothing: if the link
        holds fewer than ``nbits`` bits a :class:`KeyStoreError` is raised and nothing is consumed.
        Ranges already taken by :meth:`consume_ranges` are skipped.
        """
        _check_id("qkdl_id", qkdl_id)
        _check_nbits(qkdl_id, nbits)
        with self.batch(f"consume {nbits} bits of link {qkdl_id}") as b:
            got = b.consume(qkdl_id, nbits, consumer)
        logger.debug(
            "link %s: %d bits consumed by %s from %d block(s)", qkdl_id, nbits, consumer, len(got.ranges)
        )
        return got

    def consume_ranges(
        self, qkdl_id: str, ranges: Sequence[KeyRange], consumer: str, *, discard: bool = False
    ) -> ConsumedKey:
        """Consume exactly the given ranges (as the other end of the link did) and return their bits.

        The bits come back concatenated in the order of ``ranges``. All or nothing: a
        :class:`MissingBlockError` if a block is not in the store (it may still be on its way), a
        :class:`RangeConflictError` if a range was already consumed (here or by :meth:`consume`), lies
        outside its block or overlaps another range of the call; nothing is consumed then. The ranges
        may come in any order relative to earlier calls. ``discard`` records them in the accounting as
        discarded instead of consumed (key that is used up but must never be handed out).
        """
        with self.batch(f"consume {len(ranges)} range(s) of link {qkdl_id}") as b:
            got = b.consume_ranges(qkdl_id, ranges, consumer, discard=discard)
        logger.debug(
            "link %s: %d bits in %d range(s) %s by %s",
            qkdl_id,
            got.nbits,
            len(got.ranges),
            "discarded" if discard else "consumed",
            consumer,
        )
        return got

    def discard_consumed(self, qkdl_id: str, consumer: str, reason: str = "") -> int:
        """Reclassify what ``consumer`` consumed on a link as discarded (never handed out); returns bits.

        For key that was taken from the store but could not be delivered: the accounting keeps every
        bit, now saying it was thrown away (``reason`` goes to the log). Idempotent.
        """
        with self.batch(f"discard what {consumer} consumed on link {qkdl_id}") as b:
            n = b.discard_consumed(qkdl_id, consumer)
        if n:
            logger.info(
                "link %s: %d bits consumed by %s recorded as discarded (%s)", qkdl_id, n, consumer, reason
            )
        return n

    def ranges_of(self, qkdl_id: str, consumer: str) -> list[KeyRange]:
        """The ranges of a link ``consumer`` consumed or discarded, in the order they were recorded."""
        with self.batch(f"read the ranges of {consumer} on link {qkdl_id}") as b:
            return b.ranges_of(qkdl_id, consumer)

    def begin(self, what: str = "run a batch") -> KeyStoreBatch:
        """Open a transaction and return its batch; end it with :meth:`commit` or :meth:`rollback`.

        For callers that run the statements on one thread and the commit (its fsync) on another.
        """
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise KeyStoreError(f"key store {self._path}: cannot {what}: {exc}") from exc
        return KeyStoreBatch(conn, self._now())

    def commit(self) -> None:
        """Commit the transaction :meth:`begin` opened; on failure it is rolled back and raised."""
        conn = self._connection()
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise KeyStoreError(f"key store {self._path}: commit failed: {exc}") from exc

    def rollback(self) -> None:
        """Roll back the transaction :meth:`begin` opened."""
        try:
            self._connection().execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise KeyStoreError(f"key store {self._path}: rollback failed: {exc}") from exc

    @contextmanager
    def batch(self, what: str = "run a batch") -> Iterator[KeyStoreBatch]:
        """One transaction for several operations; it commits when the block ends without an exception.

        ``what`` names the work in error messages. SQLite errors become :class:`KeyStoreError`.
        """
        try:
            with self._transaction(what) as conn:
                yield KeyStoreBatch(conn, self._now())
        except sqlite3.Error as exc:
            raise KeyStoreError(f"key store {self._path}: cannot {what}: {exc}") from exc

    def consumed_bits(self, qkdl_id: str) -> int:
        """Bits of a link consumed over the lifetime of the store (from the accounting)."""
        return self._sum_accounting(qkdl_id, "consumed")

    def discarded_bits(self, qkdl_id: str) -> int:
        """Bits of a link discarded unused by :meth:`drop_link` (from the accounting)."""
        return self._sum_accounting(qkdl_id, "discarded")

    def _sum_accounting(self, qkdl_id: str, kind: str) -> int:
        rows = self._query(
            "SELECT COALESCE(SUM(nbits), 0) FROM accounting WHERE qkdl_id = ? AND kind = ?", (qkdl_id, kind)
        )
        return int(rows[0][0])

    def accounting(self, qkdl_id: str) -> list[ConsumptionRecord]:
        """Every consumed or discarded range of a link, oldest first."""
        rows = self._query(
            "SELECT qkdl_id, block_id, offset_bits, nbits, kind, consumer, at FROM accounting"
            " WHERE qkdl_id = ? ORDER BY id",
            (qkdl_id,),
        )
        return [
            ConsumptionRecord(str(q), str(b), int(o), int(n), str(k), str(c), float(a))
            for q, b, o, n, k, c, a in rows
        ]

    def drop_link(self, qkdl_id: str, reason: str = "link dropped") -> int:
        """Discard every block of a link; the unused ranges are recorded as discarded. Returns their bits.

        The accounting rows of the link stay (audit trail); its block ids may be reused afterwards.
        """
        _check_id("qkdl_id", qkdl_id)
        with self._transaction(f"drop link {qkdl_id}") as conn:
            rows = conn.execute(
                "SELECT block_id, bits, consumed_bits FROM blocks"
                " WHERE qkdl_id = ? AND key IS NOT NULL ORDER BY block_id",
                (qkdl_id,),
            ).fetchall()
            taken: dict[str, list[tuple[int, int]]] = {}
            for b, off, n in conn.execute(
                "SELECT block_id, offset_bits, nbits FROM taken WHERE qkdl_id = ?", (qkdl_id,)
            ):
                taken.setdefault(str(b), []).append((int(off), int(n)))
            at = self._now()
            dropped = 0
            for block_id, bits, used in rows:
                for off, n in _free_intervals(bits, used, taken.get(block_id, ())):
                    conn.execute(
                        "INSERT INTO accounting (qkdl_id, block_id, offset_bits, nbits, kind, consumer, at)"
                        " VALUES (?, ?, ?, ?, 'discarded', ?, ?)",
                        (qkdl_id, block_id, off, n, reason, at),
                    )
                    dropped += n
            conn.execute("DELETE FROM blocks WHERE qkdl_id = ?", (qkdl_id,))
            conn.execute("DELETE FROM taken WHERE qkdl_id = ?", (qkdl_id,))
        logger.info(
            "link %s: dropped from key store, %d unused bits discarded (%s)", qkdl_id, dropped, reason
        )
        return dropped

    def close(self) -> None:
        """Close the database. Idempotent; any later operation raises :class:`KeyStoreError`."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            conn.close()
        except sqlite3.Error as exc:  # pragma: no cover - close of a healthy connection does not fail
            logger.warning("key store %s: close failed: %s", self._path, exc)
        logger.debug("key store %s closed", self._path)

    def __repr__(self) -> str:
        if self._conn is None:
            return f"<KeyStore {self._path} closed>"
        rows = self._query(
            "SELECT COUNT(DISTINCT qkdl_id), COUNT(*), COALESCE(SUM(bits - consumed_bits), 0)"
            " FROM blocks WHERE key IS NOT NULL",
            (),
        )
        links, blocks, bits = rows[0]
        bits -= int(self._query("SELECT COALESCE(SUM(nbits), 0) FROM taken", ())[0][0])
        return f"<KeyStore {self._path} links={links} blocks={blocks} stored_bits={bits}>"
