"""SKIP requests and responses (agent/kme/skip.py), without I/O."""

from __future__ import annotations

import re
import uuid

import pytest

from agent.kme.etsi014 import KmeError, Limits, bad, new_request_id
from agent.kme.skip import (
    DEFAULT_ENTROPY_BITS,
    DEFAULT_KEY_BITS,
    MAX_ENTROPY_BITS,
    KeyByIdRequest,
    KeyRequest,
    capabilities_body,
    entropy_body,
    error_body,
    key_body,
    key_id_hex,
    key_id_uuid,
    parse_entropy_query,
    parse_key_by_id,
    parse_key_query,
    remote_systems,
)

LIMITS = Limits(default_key_size=128, min_key_size=64, max_key_size=4096)


def test_key_query_defaults_to_256_bits_not_the_etsi_default() -> None:
    assert DEFAULT_KEY_BITS == 256
    assert parse_key_query([("remoteSystemID", "sae-b")], LIMITS) == KeyRequest("sae-b", 256)
    assert parse_key_query([("size", "512"), ("remoteSystemID", "b:1.x_y")], LIMITS) == KeyRequest(
        "b:1.x_y", 512
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ([], r"^the remoteSystemID query parameter is required$"),
        ([("size", "256")], r"remoteSystemID query parameter is required"),
        ([("remoteSystemID", "")], r"^remoteSystemID '' is not a valid system ID"),
        ([("remoteSystemID", "a b")], r"remoteSystemID 'a b' is not a valid system ID"),
        ([("remoteSystemID", "x" * 65)], r"is not a valid system ID"),
        ([("remoteSystemID", "b"), ("remoteSystemID", "c")], r"remoteSystemID' is given more than once"),
        ([("remoteSystemID", "b"), ("number", "2")], r"^unknown query parameter 'number'"),
        ([("remoteSystemID", "b"), ("size", "0")], r"^size 0 is below min_key_size 64$"),
        ([("remoteSystemID", "b"), ("size", "12")], r"^size 12 is not a multiple of 8$"),
        ([("remoteSystemID", "b"), ("size", "8192")], r"^size 8192 exceeds max_key_size 4096$"),
        ([("remoteSystemID", "b"), ("size", "-8")], r"^size must be a positive integer"),
        ([("remoteSystemID", "b"), ("size", "2.5e2")], r"^size must be a decimal integer"),
        ([("remoteSystemID", "b"), ("size", "")], r"^size must be a decimal integer"),
    ],
)
def test_key_query_errors_are_400_naming_the_parameter(query: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(KmeError) as info:
        parse_key_query(query, LIMITS)
    assert info.value.status == 400
    assert re.search(message, info.value.message), info.value.message


def test_key_ids_are_the_uuid_key_ids_in_hex_both_ways() -> None:
    rid = new_request_id()
    hex_id = key_id_hex(rid)
    assert re.fullmatch(r"[0-9a-f]{32}", hex_id)
    assert hex_id == rid.replace("-", "")
    assert key_id_uuid(hex_id) == rid
    assert key_id_uuid(hex_id.upper()) == rid
    assert str(uuid.UUID(rid)) == rid


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0" * 31,
        "0" * 33,
        "g" * 32,
        "12345678-1234-7234-8234-123456789abc",
        " " + "0" * 31,
        "0x" + "0" * 30,
    ],
)
def test_malformed_key_ids_are_400(text: str) -> None:
    with pytest.raises(KmeError) as info:
        key_id_uuid(text)
    assert info.value.status == 400
    assert "is malformed: 32 hexadecimal digits are expected" in info.value.message


def test_key_by_id_needs_the_remote_system_and_nothing_else() -> None:
    rid = new_request_id()
    got = parse_key_by_id(key_id_hex(rid), [("remoteSystemID", "sae-a")])
    assert got == KeyByIdRequest("sae-a", rid)
    for query in ([], [("remoteSystemID", "sae-a"), ("size", "256")]):
        with pytest.raises(KmeError) as info:
            parse_key_by_id(key_id_hex(rid), query)
        assert info.value.status == 400


def test_entropy_is_counted_in_bits_and_rounded_up_to_whole_bytes() -> None:
    assert DEFAULT_ENTROPY_BITS == 256
    assert parse_entropy_query([]) == 32
    assert parse_entropy_query([("minentropy", "128")]) == 16
    assert parse_entropy_query([("minentropy", "100")]) == 13
    assert parse_entropy_query([("minentropy", "1")]) == 1
    assert parse_entropy_query([("minentropy", str(MAX_ENTROPY_BITS))]) == MAX_ENTROPY_BITS // 8


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ([("minentropy", "0")], r"^minentropy 0 is not within \[1, 65536\] bits$"),
        ([("minentropy", str(MAX_ENTROPY_BITS + 1))], r"is not within"),
        ([("minentropy", "-1")], r"^minentropy must be a positive integer"),
        ([("minentropy", "lots")], r"^minentropy must be a decimal integer"),
        ([("size", "256")], r"^unknown query parameter 'size'"),
        ([("minentropy", "8"), ("minentropy", "16")], r"given more than once"),
    ],
)
def test_entropy_query_errors(query: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(KmeError) as info:
        parse_entropy_query(query)
    assert info.value.status == 400
    assert re.search(message, info.value.message), info.value.message


def test_remote_systems_in_either_role_sorted_without_the_caller() -> None:
    pairs = [("a", "b"), ("c", "a"), ("a", "d"), ("b", "c"), ("a", "a"), ("d", "a")]
    assert remote_systems(pairs, "a") == ["b", "c", "d"]
    assert remote_systems(pairs, "c") == ["a", "b"]
    assert remote_systems(pairs, "z") == []


def test_bodies_follow_the_draft_field_names() -> None:
    assert capabilities_body("sae-a", ["sae-b", "sae-c"]) == {
        "entropy": True,
        "key": True,
        "algorithm": "QKD",
        "localSystemID": "sae-a",
        "remoteSystemID": ["sae-b", "sae-c"],
    }
    rid = new_request_id()
    assert key_body(rid, bytes(range(32))) == {"keyId": rid.replace("-", ""), "key": bytes(range(32)).hex()}
    assert entropy_body(b"\xab" * 13) == {"randomStr": "ab" * 13, "minentropy": 104}


def test_errors_carry_only_a_message() -> None:
    exc = bad("size 12 is not a multiple of 8", parameter="size", value=12)
    assert exc.body()["details"]
    assert error_body(exc) == {"message": "size 12 is not a multiple of 8"}
    assert error_body(KmeError(503, "keys not ready")) == {"message": "keys not ready"}
