"""The controller's SQLite desired state survives a reopen and refuses dangling deletes."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.store import NodeRecord, SessionRecord, SpanRecord, Store
from qsdn.errors import QsdnError


def test_records_round_trip_and_survive_reopen(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    s = Store(db)
    s.put_node(NodeRecord("n1", "alice", "127.0.0.1", 830, password="secret"))
    s.put_node(NodeRecord("n2", "bob", "127.0.0.1", 831))
    s.put_span(SpanRecord("s1", "n1", "n2", 50.0, bands=("C",)))
    sess = SessionRecord(
        "x1",
        "n1",
        "n2",
        "sae-a",
        "sae-b",
        1000,
        avoid=("n3",),
        status="active",
        path=("n1", "n2"),
        spans=("s1",),
    )
    s.put_session(sess)
    s.close()
    s = Store(db)
    assert [n.name for n in s.nodes()] == ["alice", "bob"]
    assert s.spans()[0].bands == ("C",)
    got = s.session("x1")
    assert got == sess
    assert "secret" not in repr(s.node("n1"))
    s.close()


def test_transaction_is_all_or_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.sqlite")
    with pytest.raises(RuntimeError), s.transaction():
        s.put_node(NodeRecord("n1", "alice", "h"))
        raise RuntimeError("boom")
    assert s.nodes() == []
    with s.transaction():
        s.put_node(NodeRecord("n1", "alice", "h"))
    assert len(s.nodes()) == 1


def test_deletes_refuse_what_is_still_used(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.sqlite")
    s.put_node(NodeRecord("n1", "a", "h"))
    s.put_node(NodeRecord("n2", "b", "h"))
    s.put_span(SpanRecord("s1", "n1", "n2", 10.0))
    s.put_session(SessionRecord("x", "n1", "n2", "a", "b", 1, status="active", spans=("s1",)))
    with pytest.raises(QsdnError, match="still has fibre spans"):
        s.delete_node("n1")
    with pytest.raises(QsdnError, match="carries sessions"):
        s.delete_span("s1")
    assert s.delete_session("x")
    assert s.delete_span("s1")
    assert s.delete_node("n1")
    assert not s.delete_node("n1")
