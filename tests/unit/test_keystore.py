"""Unit tests for agent.keystore: blocks, deterministic consumption, accounting, persistence."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.keystore import BlockInfo, KeyRange, KeyStore
from qsdn.errors import KeyStoreError

B1 = bytes.fromhex("a5" * 4)  # 10100101...
B2 = bytes(range(1, 9))
B3 = bytes.fromhex("ff00ff00")


class FakeNow:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    ks = KeyStore(tmp_path / "keys.db", now=FakeNow())
    yield ks
    ks.close()


def _bits(data: bytes) -> str:
    return "".join(f"{b:08b}" for b in data)


def test_add_and_inspect(store: KeyStore) -> None:
    assert store.stored_bits("L1") == 0
    assert store.blocks("L1") == []
    assert store.add_block("L1", "0002", B2) is True
    assert store.add_block("L1", "0001", B1) is True
    assert store.add_block("L2", "0001", B3) is True
    assert store.stored_bits("L1") == 96
    assert store.blocks("L1") == [BlockInfo("0001", 32), BlockInfo("0002", 64)]  # sorted by block id
    assert store.get_block("L1", "0002") == B2
    assert store.get_block("L2", "0001") == B3
    assert store.links() == ["L1", "L2"]
    assert store.consumed_bits("L1") == 0


def test_add_is_idempotent_and_detects_conflicts(store: KeyStore) -> None:
    store.add_block("L1", "b", B1)
    assert store.add_block("L1", "b", B1) is False
    assert store.stored_bits("L1") == 32
    with pytest.raises(KeyStoreError, match=r"link L1: block b already stored with different key material"):
        store.add_block("L1", "b", B3)
    assert store.get_block("L1", "b") == B1


@pytest.mark.parametrize(
    ("qkdl_id", "block_id", "key"),
    [("", "b", B1), ("L1", "", B1), ("L1", "b", b""), ("L1", "x" * 300, B1)],
)
def test_add_rejects_bad_arguments(store: KeyStore, qkdl_id: str, block_id: str, key: bytes) -> None:
    with pytest.raises(KeyStoreError):
        store.add_block(qkdl_id, block_id, key)


def test_get_unknown_block(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="link L1: no block nope"):
        store.get_block("L1", "nope")


def test_consume_across_blocks_in_block_id_order(store: KeyStore) -> None:
    store.add_block("L1", "0002", B2)
    store.add_block("L1", "0001", B1)
    all_bits = _bits(B1) + _bits(B2)

    first = store.consume("L1", 12, consumer="app-1")
    assert first.ranges == [KeyRange("0001", 0, 12)]
    assert first.nbits == 12
    assert _bits(first.key) == all_bits[:12] + "0000"  # padded to whole bytes

    second = store.consume("L1", 40, consumer="app-2")
    assert second.ranges == [KeyRange("0001", 12, 20), KeyRange("0002", 0, 20)]
    assert _bits(second.key) == all_bits[12:52]

    assert store.stored_bits("L1") == 96 - 52
    assert store.consumed_bits("L1") == 52
    # Block 0001 is used up: its bytes are gone, it no longer lists, a late duplicate is ignored.
    assert store.blocks("L1") == [BlockInfo("0002", 64)]
    with pytest.raises(KeyStoreError, match="used up"):
        store.get_block("L1", "0001")
    assert store.add_block("L1", "0001", B1) is False
    assert store.stored_bits("L1") == 44

    rest = store.consume("L1", 44)
    assert _bits(rest.key) == all_bits[52:] + "0000"
    assert store.stored_bits("L1") == 0
    assert store.blocks("L1") == []


def test_identical_requests_give_identical_bits_at_both_ends(tmp_path: Path) -> None:
    a = KeyStore(tmp_path / "a.db")
    b = KeyStore(tmp_path / "b.db")
    try:
        blocks = [("k3", B3), ("k1", B1), ("k2", B2)]
        for block_id, key in blocks:
            a.add_block("L", block_id, key)
        for block_id, key in reversed(blocks):  # other arrival order at the other end
            b.add_block("L", block_id, key)
        for n in (5, 17, 8, 30, 40):
            ka, kb = a.consume("L", n, "sae-a"), b.consume("L", n, "sae-b")
            assert ka.ranges == kb.ranges
            assert ka.key == kb.key
    finally:
        a.close()
        b.close()


def test_consume_all_or_nothing(store: KeyStore) -> None:
    store.add_block("L1", "a", B1)
    with pytest.raises(KeyStoreError, match=r"link L1: not enough key: 33 bits requested, 32 available"):
        store.consume("L1", 33)
    assert store.stored_bits("L1") == 32
    assert store.accounting("L1") == []
    with pytest.raises(KeyStoreError, match="link L9: not enough key"):
        store.consume("L9", 8)
    for bad in (0, -8, True):
        with pytest.raises(KeyStoreError):
            store.consume("L1", bad)


def test_accounting_records_every_range(store: KeyStore) -> None:
    store.add_block("L1", "a", B1)
    store.add_block("L1", "b", B2)
    store.consume("L1", 40, consumer="ETSI014 enc_keys SAE-A")
    records = store.accounting("L1")
    assert [(r.block_id, r.offset_bits, r.nbits, r.kind, r.consumer) for r in records] == [
        ("a", 0, 32, "consumed", "ETSI014 enc_keys SAE-A"),
        ("b", 0, 8, "consumed", "ETSI014 enc_keys SAE-A"),
    ]
    assert records[0].at == records[1].at > 1_700_000_000.0
    assert store.consumed_bits("L1") == 40


def test_drop_link_records_discarded_bits(store: KeyStore) -> None:
    store.add_block("L1", "a", B1)
    store.add_block("L1", "b", B2)
    store.add_block("L2", "a", B3)
    store.consume("L1", 8)
    assert store.drop_link("L1", reason="link removed") == 88
    assert store.stored_bits("L1") == 0
    assert store.blocks("L1") == []
    assert store.discarded_bits("L1") == 88
    assert store.consumed_bits("L1") == 8
    kinds = [(r.block_id, r.offset_bits, r.nbits, r.kind) for r in store.accounting("L1")]
    assert kinds == [("a", 0, 8, "consumed"), ("a", 8, 24, "discarded"), ("b", 0, 64, "discarded")]
    assert store.stored_bits("L2") == 32  # other links untouched
    assert store.add_block("L1", "a", B3) is True  # ids may be reused after a drop


def test_restart_keeps_blocks_offsets_and_accounting(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keys.db"
    ks = KeyStore(path)
    ks.add_block("L1", "a", B1)
    ks.add_block("L1", "b", B2)
    ks.consume("L1", 20, consumer="before restart")
    ks.close()
    assert ks.closed

    ks = KeyStore(path)
    try:
        assert ks.stored_bits("L1") == 76
        assert ks.blocks("L1") == [BlockInfo("a", 32), BlockInfo("b", 64)]
        assert ks.get_block("L1", "b") == B2
        assert [(r.block_id, r.nbits, r.consumer) for r in ks.accounting("L1")] == [
            ("a", 20, "before restart")
        ]
        after = ks.consume("L1", 12)
        assert after.ranges == [KeyRange("a", 20, 12)]
        assert _bits(after.key) == _bits(B1)[20:32] + "0000"
        assert ks.consumed_bits("L1") == 32
        with contextlib.closing(sqlite3.connect(path)) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        ks.close()


def test_closed_store_refuses_operations(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "k.db")
    ks.close()
    ks.close()  # idempotent
    with pytest.raises(KeyStoreError, match="closed"):
        ks.add_block("L1", "a", B1)
    with pytest.raises(KeyStoreError, match="closed"):
        ks.stored_bits("L1")
    assert "closed" in repr(ks)


def test_unopenable_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(KeyStoreError, match="cannot open key store"):
        KeyStore(tmp_path / "file" / "keys.db")


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(KeyStoreError, match="cannot initialise key store"):
        KeyStore(path)


def test_key_material_never_in_repr_or_logs(store: KeyStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.keystore")
    secret = bytes.fromhex("deadbeefcafebabe0123456789abcdef")
    store.add_block("L1", "blk", secret)
    got = store.consume("L1", 64, consumer="test")
    store.drop_link("L1")
    text = repr(store) + repr(got) + caplog.text
    assert "links=0 blocks=0 stored_bits=0" in repr(store)
    for needle in (secret.hex(), secret[:8].hex(), repr(secret[:8]), repr(got.key)):
        assert needle not in text
    assert "key=" not in repr(got)


def test_key_store_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0)
    try:
        store = KeyStore(tmp_path / "keys.sqlite")
        store.add_block("link-1", "b1", b"\x01" * 32)
    finally:
        os.umask(old)
    for p in tmp_path.glob("keys.sqlite*"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    store.close()


# The schema of version 1 (agent/keystore.py before 69acb6a), as an agent of that version wrote it.
_V1_SCHEMA = """
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

_V1_ACCOUNTING = [
    ("L1", "a", 0, 32, "consumed", "sae-1", 1_600_000_001.0),
    ("L1", "b", 0, 20, "consumed", "sae-2", 1_600_000_002.0),
    ("L1", "b", 40, 8, "consumed", "kme:peer", 1_600_000_003.0),
    ("L2", "x", 0, 8, "discarded", "kme:abort", 1_600_000_004.0),
]


def _write_v1_store(path: Path) -> None:
    """A version-1 store in the state an old agent left it: on L1 a used-up block, a block whose
    frontier moved (bits 0-19) with a range consumed beyond it (bits 40-47, in ``taken``) and a
    fresh block; on L2 a block partly discarded."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as raw:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.executescript(_V1_SCHEMA)
        raw.executemany(
            "INSERT INTO blocks (qkdl_id, block_id, bits, consumed_bits, key, added_at) VALUES (?, ?, ?, ?, ?, ?)",
            [
                ("L1", "a", 32, 32, None, 1_600_000_000.0),
                ("L1", "b", 64, 20, B2, 1_600_000_000.5),
                ("L1", "c", 32, 0, B3, 1_600_000_000.7),
                ("L2", "x", 32, 8, B1, 1_600_000_000.9),
            ],
        )
        raw.execute("INSERT INTO taken (qkdl_id, block_id, offset_bits, nbits) VALUES ('L1', 'b', 40, 8)")
        raw.executemany(
            "INSERT INTO accounting (qkdl_id, block_id, offset_bits, nbits, kind, consumer, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            _V1_ACCOUNTING,
        )
        raw.execute("PRAGMA user_version=1")


def _dump(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as raw:
        return list(raw.iterdump())


def test_version_1_store_is_upgraded_intact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.db"
    _write_v1_store(path)
    caplog.set_level(logging.INFO, logger="agent.keystore")

    ks = KeyStore(path, now=FakeNow())
    try:
        assert caplog.text.count("schema upgraded from version 1 to 2") == 1
        # totals, blocks and accounting as the old agent left them
        assert ks.stored_bits("L1") == (64 - 20 - 8) + 32
        assert ks.stored_bits("L2") == 24
        assert ks.links() == ["L1", "L2"]
        assert ks.blocks("L1") == [BlockInfo("b", 64), BlockInfo("c", 32)]
        assert ks.get_block("L1", "b") == B2
        assert ks.get_block("L1", "c") == B3
        with pytest.raises(KeyStoreError, match="used up"):
            ks.get_block("L1", "a")
        got = [
            (r.qkdl_id, r.block_id, r.offset_bits, r.nbits, r.kind, r.consumer, r.at)
            for r in ks.accounting("L1")
        ]
        assert (
            got
            + [
                (r.qkdl_id, r.block_id, r.offset_bits, r.nbits, r.kind, r.consumer, r.at)
                for r in ks.accounting("L2")
            ]
            == _V1_ACCOUNTING
        )
        assert (ks.consumed_bits("L1"), ks.discarded_bits("L1")) == (60, 0)
        assert (ks.consumed_bits("L2"), ks.discarded_bits("L2")) == (0, 8)

        # further consumption honours the old frontier and the old taken range
        with pytest.raises(KeyStoreError, match="already consumed"):
            ks.consume_ranges("L1", [KeyRange("b", 10, 4)], "late")
        with pytest.raises(KeyStoreError, match="already consumed"):
            ks.consume_ranges("L1", [KeyRange("b", 44, 8)], "late")
        first = ks.consume("L1", 30, consumer="after upgrade")
        assert first.ranges == [KeyRange("b", 20, 20), KeyRange("b", 48, 10)]
        assert _bits(first.key) == _bits(B2)[20:40] + _bits(B2)[48:58] + "00"
        rest = ks.consume_ranges("L1", [KeyRange("b", 58, 6)], "peer after upgrade")
        assert _bits(rest.key) == _bits(B2)[58:64] + "00"
        assert ks.blocks("L1") == [BlockInfo("c", 32)]  # block b used up, its key erased
        assert ks.stored_bits("L1") == 32
        assert ks.consumed_bits("L1") == 96
        nxt = ks.consume("L1", 8, consumer="next")
        assert nxt.ranges == [KeyRange("c", 0, 8)] and nxt.key == B3[:1]
        assert ks.consume("L2", 24).key == B1[1:]
    finally:
        ks.close()

    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = dict(raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
        assert "blocks_v1" not in tables
        assert "WITHOUT ROWID" not in tables["blocks"]  # a rowid table: blob I/O on keys
        indexes = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"blocks_live", "accounting_link", "accounting_consumer"} <= indexes
        # block b's old frontier and taken range are gone with its key; c's first 8 bits are in taken
        assert raw.execute("SELECT * FROM taken").fetchall() == [("L1", "c", 0, 8)]
        assert raw.execute("SELECT key IS NULL FROM blocks WHERE block_id = 'b'").fetchone()[0] == 1

    # a second open is a no-op: nothing upgraded, not a byte of content changed
    before = _dump(path)
    caplog.clear()
    ks = KeyStore(path, now=FakeNow())
    try:
        assert "upgraded" not in caplog.text
        assert ks.stored_bits("L1") == 24
        assert ks.consumed_bits("L1") == 104
    finally:
        ks.close()
    assert _dump(path) == before
