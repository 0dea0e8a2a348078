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
