"""The entanglement delivery API's pure parts: requests, ids, the running configuration, held pairs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from agent.drivers.quantum_medium import Basis
from agent.kme.entanglement_api import (
    DEFAULT_TIMEOUT_S,
    MAX_PAIRS_PER_REQUEST,
    MAX_TIMEOUT_S,
    _Pool,
    expected_qber,
    pair_id_label,
    pair_id_text,
    pairs_sessions,
    parse_measure_body,
    parse_session_id,
    rfc3339,
)
from agent.kme.etsi014 import KmeError

NODE_A = "0e000000-0000-4000-8000-00000000000a"
NODE_B = "0e000000-0000-4000-8000-00000000000b"
SESSION = "3e000000-0000-4000-8000-000000000007"


def _body(**kw: Any) -> bytes:
    return json.dumps(kw).encode()


def test_number_and_one_basis() -> None:
    req = parse_measure_body(_body(number=3, basis="X"))
    assert req.number == 3 and req.bases == (Basis.X,) * 3
    assert req.pair_ids is None and req.timeout_s == DEFAULT_TIMEOUT_S


def test_number_defaults_to_one_and_random_bases_are_left_open() -> None:
    req = parse_measure_body(_body(basis="random", timeout_s=0))
    assert req.number == 1 and req.bases == (None,) and req.timeout_s == 0.0


def test_pair_ids_with_a_basis_per_pair() -> None:
    req = parse_measure_body(_body(pair_IDs=["0-7", "0-9"], basis=["Z", "X"], timeout_s=1.5))
    assert req.pair_ids == ("0-7", "0-9") and req.number == 2
    assert req.bases == (Basis.Z, Basis.X) and req.timeout_s == 1.5


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "JSON"),
        (b"[1]", "JSON object"),
        (b'{"number": 1, "number": 2, "basis": "Z"}', "appears twice"),
        (_body(number=1), "basis is required"),
        (_body(number=True, basis="Z"), "integer"),
        (_body(number=1.0, basis="Z"), "integer"),
        (_body(number=MAX_PAIRS_PER_REQUEST + 1, basis="Z"), "max_pairs_per_request"),
        (_body(number=-1, basis="Z"), "not within"),
        (_body(basis="z"), "basis must be"),
        (_body(basis=["Z", "X"]), "one per pair"),
        (_body(number=2, basis=["Z", 1]), "basis[1]"),
        (_body(basis=None), "basis must be"),
        (_body(pair_IDs=[], basis="Z"), "1 to"),
        (_body(pair_IDs="0-1", basis="Z"), "array of strings"),
        (_body(pair_IDs=[1], basis="Z"), "array of strings"),
        (_body(pair_IDs=["0-01"], basis="Z"), "malformed"),
        (_body(pair_IDs=["-1-1"], basis="Z"), "malformed"),
        (_body(pair_IDs=["0-1", "0-1"], basis="Z"), "more than once"),
        (_body(pair_IDs=["0-1"], number=1, basis="Z"), "not both"),
        (_body(basis="Z", timeout_s="1"), "timeout_s must be a number"),
        (_body(basis="Z", timeout_s=True), "timeout_s must be a number"),
        (_body(basis="Z", timeout_s=MAX_TIMEOUT_S + 1), "not within"),
        (b'{"basis": "Z", "timeout_s": NaN}', "JSON"),
        (_body(basis="Z", key_IDs=[]), "unknown member"),
    ],
)
def test_bad_requests_are_400_naming_the_problem(body: bytes, fragment: str) -> None:
    with pytest.raises(KmeError) as err:
        parse_measure_body(body)
    assert err.value.status == 400
    assert fragment in err.value.message, err.value.message
    assert "message" in err.value.body()


def test_pair_ids_round_trip() -> None:
    assert pair_id_text((0, 42)) == "0-42"
    assert pair_id_label("0-42") == (0, 42)
    for bad in ("", "0", "0-", "a-1", "0-1-2", "00-1", " 0-1", "1" * 10 + "-1"):
        with pytest.raises(KmeError):
            pair_id_label(bad)


def test_session_ids_are_canonical_uuids() -> None:
    assert parse_session_id(SESSION.upper()) == SESSION
    for bad in ("abc", SESSION.replace("-", ""), "{" + SESSION + "}"):
        with pytest.raises(KmeError) as err:
            parse_session_id(bad)
        assert err.value.status == 400


def test_expected_qber_and_timestamps() -> None:
    assert expected_qber(None) is None
    assert expected_qber(1.0) == 0.0
    assert expected_qber(0.25) == pytest.approx(0.5)
    assert expected_qber(0.835) == pytest.approx(0.11)
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500000Z"


def _running(role: str, application: str, clients: list[str], me: str = NODE_B) -> str:
    cl = "".join(f"<clients>{c}</clients>" for c in clients)
    return f"""<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdn_id>{me}</qkdn_id>
  <entanglement xmlns="urn:qsdn:yang:qsdn-entanglement"><sessions><session>
    <session_id>{SESSION.upper()}</session_id><role>{role}</role>
    <end_a_qkdn_id>{NODE_A}</end_a_qkdn_id><end_b_qkdn_id>{NODE_B}</end_b_qkdn_id>
    <cutoff_time_s>0.5</cutoff_time_s><target_fidelity>0.9</target_fidelity>
    <application>{application}</application>{cl}
  </session></sessions></entanglement></qkd_node>"""


def test_running_configuration_gives_the_pairs_sessions_ending_here() -> None:
    sessions = pairs_sessions(_running("end", "pairs", ["app-b", "urn:x:app"]), NODE_B)
    s = sessions[SESSION]
    assert s.peer_qkdn_id == NODE_A and s.clients == {"app-b", "urn:x:app"}
    assert s.cutoff_time_s == 0.5 and s.target_fidelity == 0.9
    assert pairs_sessions(_running("end", "pairs", ["app-a"], NODE_A), NODE_A)[SESSION].peer_qkdn_id == NODE_B
    assert pairs_sessions(_running("end", "bbm92-key", []), NODE_B) == {}
    assert pairs_sessions(_running("repeater", "pairs", []), NODE_B) == {}
    assert pairs_sessions("", NODE_B) == {}
    assert pairs_sessions(_running("end", "pairs", []), NODE_B)[SESSION].clients == frozenset()


class FakePair:
    def __init__(self, seq: int, delivered_s: float) -> None:
        self.pair_id = (0, seq)
        self.delivered_s = delivered_s
        self.released = False
        self.measured: Basis | None = None

    def measure_then(self, basis: Basis, done: Callable[[int], None]) -> None:
        self.measured = basis
        done(0)

    def release(self) -> None:
        self.released = True


def test_held_pairs_are_taken_oldest_first_or_by_id_and_expire_as_lost() -> None:
    pool = _Pool(SESSION, queue=None, hold_s=1.0)  # type: ignore[arg-type]
    pairs = [FakePair(i, 10.0 + i * 0.1) for i in range(4)]
    for p in pairs:
        pool.add(p, 10.5)
    assert list(pool.held) == ["0-0", "0-1", "0-2", "0-3"] and pool.delivered == 4
    held = pool.take()
    assert held is not None and held.pair_id == "0-0"
    taken = pool.take("0-2")
    assert taken is not None and taken.pair is pairs[2]
    assert pool.take("0-2") is None and "0-2" in pool.gone
    pool.add(FakePair(2, 10.6), 10.6)  # the same id again is not the same pair
    assert pool.lost == 1 and "0-2" not in pool.held
    assert pool.expire(11.15) == 1 and pairs[1].released and pool.lost == 2
    assert list(pool.held) == ["0-3"]
    pool.close()
    assert pairs[3].released and pool.closed and not pool.held and pool.lost == 3
