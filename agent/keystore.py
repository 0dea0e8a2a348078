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
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from qsdn.errors import KeyStoreError

__all__ = ["BlockInfo", "ConsumedKey", "ConsumptionRecord", "KeyRange", "KeyStore"]

logger = logging.getLogger(__name__)

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    qkdl_id       TEXT    NOT NULL,
    block_id      TEXT    NOT NULL,
    bits          INTEGER NOT NULL CHECK (bits > 0),
    consumed_bits INTEGER NOT NULL DEFAULT 0 CHECK (consumed_bits BETWEEN 0 AND bits),
    key           BLOB,
    added_at      REAL    NOT NULL,
    PRIMARY KEY (qkdl_id, block_id)
) WITHOUT ROWID;
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
"""


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


class KeyStore:
    """Per-link key blocks and the accounting of their consumption, persisted in one SQLite file."""

    def __init__(self, path: Path, *, now: Callable[[], float] = time.time) -> None:
        self._path = Path(path)
        self._now = now
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreError(f"cannot open key store {self._path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, _SCHEMA_VERSION):
                raise KeyStoreError(
                    f"key store {self._path} has schema version {version}, expected {_SCHEMA_VERSION}"
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
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
        return int(rows[0][0])

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
        """
        _check_id("qkdl_id", qkdl_id)
        if isinstance(nbits, bool) or not isinstance(nbits, int) or nbits <= 0:
            raise KeyStoreError(f"link {qkdl_id}: number of bits to consume must be a positive integer")
        with self._transaction(f"consume {nbits} bits of link {qkdl_id}") as conn:
            rows = conn.execute(
                "SELECT block_id, bits, consumed_bits, key FROM blocks"
                " WHERE qkdl_id = ? AND key IS NOT NULL ORDER BY block_id",
                (qkdl_id,),
            ).fetchall()
            available = sum(bits - used for _, bits, used, _ in rows)
            if available < nbits:
                raise KeyStoreError(
                    f"link {qkdl_id}: not enough key: {nbits} bits requested, {available} available"
                )
            at = self._now()
            ranges: list[KeyRange] = []
            acc = 0
            remaining = nbits
            for block_id, bits, used, key in rows:
                if remaining == 0:
                    break
                take = min(remaining, bits - used)
                acc = (acc << take) | _extract_bits(bytes(key), used, take)
                ranges.append(KeyRange(block_id, used, take))
                remaining -= take
                if used + take == bits:
                    conn.execute(
                        "UPDATE blocks SET consumed_bits = bits, key = NULL"
                        " WHERE qkdl_id = ? AND block_id = ?",
                        (qkdl_id, block_id),
                    )
                else:
                    conn.execute(
                        "UPDATE blocks SET consumed_bits = ? WHERE qkdl_id = ? AND block_id = ?",
                        (used + take, qkdl_id, block_id),
                    )
                conn.execute(
                    "INSERT INTO accounting (qkdl_id, block_id, offset_bits, nbits, kind, consumer, at)"
                    " VALUES (?, ?, ?, ?, 'consumed', ?, ?)",
                    (qkdl_id, block_id, used, take, consumer, at),
                )
        pad = (-nbits) % 8
        key_bytes = (acc << pad).to_bytes((nbits + pad) // 8, "big")
        logger.debug(
            "link %s: %d bits consumed by %s from %d block(s)", qkdl_id, nbits, consumer, len(ranges)
        )
        return ConsumedKey(ranges=ranges, nbits=nbits, key=key_bytes)

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
            at = self._now()
            for block_id, bits, used in rows:
                conn.execute(
                    "INSERT INTO accounting (qkdl_id, block_id, offset_bits, nbits, kind, consumer, at)"
                    " VALUES (?, ?, ?, ?, 'discarded', ?, ?)",
                    (qkdl_id, block_id, used, bits - used, reason, at),
                )
            conn.execute("DELETE FROM blocks WHERE qkdl_id = ?", (qkdl_id,))
        dropped = int(sum(bits - used for _, bits, used in rows))
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
        return f"<KeyStore {self._path} links={links} blocks={blocks} stored_bits={bits}>"
