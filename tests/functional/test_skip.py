"""SKIP (agent/kme/skip.py) on the KME's HTTPS port: real agents, encryptors over mutual TLS.

The two-node lab of test_kme.py (alice draws on the link; applications sae-a -> sae-b and sae-b ->
sae-a at both nodes) and the relay chain of test_kme_relay.py. Every refusal is checked to consume no
link key at either end.
"""

from __future__ import annotations

import base64
import collections
import itertools
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from qsdn.errors import ConfigError
from qsdn.yang import SchemaContext
from tests.functional.agents import AgentFactory
from tests.functional.test_kme import Lab, Pki, lab, lab_configs, pki
from tests.functional.test_kme_relay import chain

__all__ = ["lab", "pki"]  # the module-scoped fixtures of test_kme.py, one instance for this module

pytestmark = pytest.mark.asyncio(loop_scope="module")

HEX = re.compile(r"[0-9a-f]+")


async def get(lab: Lab, node: str, sae: str, path: str, **params: str) -> tuple[int, Any]:
    return await lab.call(node, sae, "GET", path, params=params or None)


async def new_key(lab: Lab, node: str, sae: str, remote: str, **params: str) -> dict[str, str]:
    status, body = await get(lab, node, sae, "/key", remoteSystemID=remote, **params)
    assert status == 200, body
    assert set(body) == {"keyId", "key"}
    assert len(body["keyId"]) == 32 and HEX.fullmatch(body["keyId"]) and HEX.fullmatch(body["key"])
    return dict(body)


def kme_rows(lab: Lab, node: str) -> collections.Counter[tuple[str, int, int, str, str]]:
    return collections.Counter(r for r in lab.accounting(node) if r[4].startswith("kme:"))


async def nothing_waits(lab: Lab) -> None:
    for node in ("alice", "bob"):
        assert await lab.agents[node].kme.store.waiting_keys() == 0  # type: ignore[union-attr]


# --- capabilities -----------------------------------------------------------------------------------


async def test_capabilities_name_the_caller_and_its_peers(lab: Lab) -> None:
    for node in ("alice", "bob"):
        status, body = await get(lab, node, "sae-a", "/capabilities")
        assert status == 200, body
        assert body == {
            "entropy": True,
            "key": True,
            "algorithm": "QKD",
            "localSystemID": "sae-a",
            "remoteSystemID": ["sae-b"],
        }
    status, body = await get(lab, "bob", "sae-b", "/capabilities")
    assert status == 200 and body["localSystemID"] == "sae-b" and body["remoteSystemID"] == ["sae-a"]
    status, body = await get(lab, "alice", "sae-evil", "/capabilities")
    assert status == 401, body
    assert body == {
        "message": "sae-evil is not an SAE of any key session at KME alice (no CLIENT qkd_app names it)"
    }


# --- keys -------------------------------------------------------------------------------------------


async def test_key_then_key_by_id_at_the_peer_same_bytes_once(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # initiator at the drawing end (alice) and at the other end (bob)
    for init, peer, master, slave in (("alice", "bob", "sae-a", "sae-b"), ("bob", "alice", "sae-b", "sae-a")):
        got = await new_key(lab, init, master, slave)
        assert len(bytes.fromhex(got["key"])) == 32
        assert uuid.UUID(hex=got["keyId"]).version == 7
        # the keyId is accepted in either case
        status, body = await get(lab, peer, slave, f"/key/{got['keyId'].upper()}", remoteSystemID=master)
        assert status == 200, body
        assert body == got
        status, body = await get(lab, peer, slave, f"/key/{got['keyId']}", remoteSystemID=master)
        assert status == 400
        assert body == {"message": f"keyId {got['keyId']} is unknown or already delivered"}
        assert got["key"] not in caplog.text
    got = await new_key(lab, "alice", "sae-a", "sae-b", size="512")
    assert len(bytes.fromhex(got["key"])) == 64
    status, body = await get(lab, "bob", "sae-b", f"/key/{got['keyId']}", remoteSystemID="sae-a")
    assert status == 200 and body == got
    await nothing_waits(lab)
    assert kme_rows(lab, "alice") == kme_rows(lab, "bob")


async def test_wrong_callers_are_refused_and_take_nothing(lab: Lab) -> None:
    before = (lab.accounting("alice"), lab.accounting("bob"))
    refused = [
        ("alice", "sae-evil", "/key", {"remoteSystemID": "sae-b"}, 401),
        ("alice", "sae-a", "/key", {"remoteSystemID": "sae-evil"}, 401),
        ("alice", "sae-a", "/key", {"remoteSystemID": "sae-a"}, 401),
    ]
    for node, sae, path, params, code in refused:
        status, body = await get(lab, node, sae, path, **params)
        assert status == code, (sae, params, body)
        assert set(body) == {"message"}
    assert (lab.accounting("alice"), lab.accounting("bob")) == before
    got = await new_key(lab, "alice", "sae-a", "sae-b")
    path = f"/key/{got['keyId']}"
    for node, sae, remote, code in (
        ("bob", "sae-evil", "sae-a", 401),  # not a slave of sae-a
        ("bob", "sae-a", "sae-a", 401),  # the initiator itself
        ("bob", "sae-b", "sae-evil", 401),  # another master
        ("alice", "sae-b", "sae-a", 400),  # the initiator's KME kept nothing of it
        ("bob", "sae-a", "sae-b", 400),  # the other application (sae-b -> sae-a): not its key
    ):
        status, body = await get(lab, node, sae, path, remoteSystemID=remote)
        assert status == code, (node, sae, remote, body)
        assert set(body) == {"message"}
    # none of that took the key from its slave
    status, body = await get(lab, "bob", "sae-b", path, remoteSystemID="sae-a")
    assert status == 200 and body == got
    await nothing_waits(lab)


async def test_bad_requests_are_refused_without_consuming(lab: Lab) -> None:
    kid = "0" * 32
    cases: list[tuple[str, str, dict[str, str], int, str]] = [
        ("GET", "/key", {}, 400, r"^the remoteSystemID query parameter is required$"),
        (
            "GET",
            "/key",
            {"remoteSystemID": "sae b"},
            400,
            r"^remoteSystemID 'sae b' is not a valid system ID",
        ),
        ("GET", "/key", {"remoteSystemID": "sae-b", "size": "0"}, 400, r"^size 0 is below min_key_size 64$"),
        ("GET", "/key", {"remoteSystemID": "sae-b", "size": "12"}, 400, r"^size 12 is not a multiple of 8$"),
        ("GET", "/key", {"remoteSystemID": "sae-b", "size": "8192"}, 400, r"exceeds max_key_size 4096"),
        ("GET", "/key", {"remoteSystemID": "sae-b", "size": "-8"}, 400, r"must be a positive integer"),
        ("GET", "/key", {"remoteSystemID": "sae-b", "size": "big"}, 400, r"must be a decimal integer"),
        (
            "GET",
            "/key",
            {"remoteSystemID": "sae-b", "number": "2"},
            400,
            r"^unknown query parameter 'number'",
        ),
        ("GET", f"/key/{kid[:31]}", {"remoteSystemID": "sae-a"}, 400, r"is malformed: 32 hexadecimal digits"),
        ("GET", f"/key/{'z' * 32}", {"remoteSystemID": "sae-a"}, 400, r"is malformed"),
        ("GET", f"/key/{uuid.uuid4()}", {"remoteSystemID": "sae-a"}, 400, r"is malformed"),
        (
            "GET",
            f"/key/{kid}",
            {"remoteSystemID": "sae-a"},
            400,
            rf"^keyId {kid} is unknown or already delivered$",
        ),
        ("GET", f"/key/{kid}", {}, 400, r"remoteSystemID query parameter is required"),
        ("GET", "/entropy", {"minentropy": "0"}, 400, r"^minentropy 0 is not within \[1, 65536\] bits$"),
        ("GET", "/entropy", {"minentropy": "65537"}, 400, r"is not within"),
        ("GET", "/entropy", {"minentropy": "x"}, 400, r"must be a decimal integer"),
        ("GET", "/capabilities", {"x": "1"}, 400, r"^capabilities takes no query parameters, got 'x'$"),
        ("POST", "/key", {"remoteSystemID": "sae-b"}, 405, r"^Method Not Allowed$"),
        ("DELETE", f"/key/{kid}", {"remoteSystemID": "sae-a"}, 405, r"^Method Not Allowed$"),
        ("GET", "/keys", {"remoteSystemID": "sae-b"}, 404, r"^Not Found$"),
    ]
    before = (lab.accounting("alice"), lab.accounting("bob"))
    failures = []
    for method, path, params, code, message in cases:
        node, sae = ("bob", "sae-b") if path.startswith("/key/") else ("alice", "sae-a")
        status, body = await lab.call(node, sae, method, path, params=params or None)
        if status != code or set(body) != {"message"} or not re.search(message, body["message"]):
            failures.append(f"{method} {path} {params}: {status} {body}")
    assert not failures, "\n".join(failures)
    assert (lab.accounting("alice"), lab.accounting("bob")) == before
    await nothing_waits(lab)


# --- entropy ----------------------------------------------------------------------------------------


async def test_entropy_is_hex_of_the_asked_length_and_takes_no_key(lab: Lab) -> None:
    before = (lab.accounting("alice"), lab.accounting("bob"))
    seen = set()
    for params, n_hex, bits in (
        ({}, 64, 256),
        ({"minentropy": "128"}, 32, 128),
        ({"minentropy": "100"}, 26, 104),
    ):
        status, body = await get(lab, "alice", "sae-a", "/entropy", **params)
        assert status == 200, body
        assert set(body) == {"randomStr", "minentropy"}
        assert HEX.fullmatch(body["randomStr"]) and len(body["randomStr"]) == n_hex
        assert body["minentropy"] == bits and type(body["minentropy"]) is int
        seen.add(body["randomStr"])
    assert len(seen) == 3
    status, body = await get(lab, "alice", "sae-evil", "/entropy")
    assert status == 401 and set(body) == {"message"}
    assert (lab.accounting("alice"), lab.accounting("bob")) == before


# --- one store for both front ends ------------------------------------------------------------------


async def test_skip_and_etsi_014_draw_from_one_store_without_overlap(lab: Lab) -> None:
    etsi_1 = await lab.enc("alice", "sae-a", "sae-b", number=2, size=256)
    skip_1 = await new_key(lab, "alice", "sae-a", "sae-b")
    etsi_2 = await lab.enc("bob", "sae-b", "sae-a", number=1, size=256)
    skip_2 = await new_key(lab, "bob", "sae-b", "sae-a", size="256")
    etsi_ids = [k["key_ID"] for k in etsi_1 + etsi_2]
    skip_ids = [str(uuid.UUID(hex=k["keyId"])) for k in (skip_1, skip_2)]
    assert len(set(etsi_ids + skip_ids)) == 5
    keys = [bytes.fromhex(k["key"]) for k in (skip_1, skip_2)]
    keys += [base64.b64decode(k["key"]) for k in etsi_1 + etsi_2]
    assert len(set(keys)) == 5
    # the link key of the four requests: disjoint ranges, the same at both ends
    rows = [r for r in lab.accounting("alice") if r[4].startswith("kme:")]
    by_block: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for block, offset, nbits, _kind, _consumer in rows:
        by_block[block].append((offset, offset + nbits))
    for spans in by_block.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    requests = {r[4] for r in rows}
    assert {f"kme:{rid}" for rid in skip_ids} <= requests
    assert {f"kme:{etsi_1[0]['key_ID']}", f"kme:{etsi_2[0]['key_ID']}"} <= requests
    # a SKIP key is an ETSI 014 key too: its slave may take it with dec_keys, and then it is gone
    status, got = await lab.dec("bob", "sae-b", "sae-a", [skip_ids[0]])
    assert status == 200 and base64.b64decode(got["keys"][0]["key"]).hex() == skip_1["key"]
    status, body = await get(lab, "bob", "sae-b", f"/key/{skip_1['keyId']}", remoteSystemID="sae-a")
    assert status == 400, body
    # and the rest is fetched where it waits, by either API
    status, body = await get(lab, "alice", "sae-a", f"/key/{skip_2['keyId']}", remoteSystemID="sae-b")
    assert status == 200 and body == skip_2
    status, got = await lab.dec("bob", "sae-b", "sae-a", [k["key_ID"] for k in etsi_1])
    assert status == 200 and got["keys"] == etsi_1
    status, got = await lab.dec("alice", "sae-a", "sae-b", [etsi_2[0]["key_ID"]])
    assert status == 200 and got["keys"] == etsi_2
    await nothing_waits(lab)
    assert kme_rows(lab, "alice") == kme_rows(lab, "bob")


# --- configuration ----------------------------------------------------------------------------------


async def test_skip_can_be_switched_off(tmp_path: Path, pki: Pki, schema: SchemaContext) -> None:
    cfgs = lab_configs(tmp_path, pki)
    with pytest.raises(ConfigError, match=r"kme\.skip: must be true or false"):
        parse_config({**cfgs["alice"], "kme": {**cfgs["alice"]["kme"], "skip": "yes"}})
    assert parse_config(cfgs["alice"]).kme.skip is True  # type: ignore[union-attr]
    cfgs["alice"]["kme"]["skip"] = False
    lab = Lab(pki, schema, cfgs)
    try:
        await lab.start("alice")
        for path in ("/capabilities", "/key", "/entropy"):
            status, body = await lab.call("alice", "sae-a", "GET", path)
            assert status == 404 and body == {"message": "Not Found"}
        status, body = await lab.call("alice", "sae-evil", "GET", "/api/v1/keys/sae-b/status")
        assert status == 401, body  # ETSI 014 is still served
    finally:
        await lab.close()


# --- trusted relay ----------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="function")  # the loop of the start_agent fixture
async def test_skip_keys_through_a_trusted_relay(tmp_path: Path, start_agent: AgentFactory) -> None:
    async with chain(tmp_path, start_agent, ["A", "B", "C"]) as c:

        async def skip_get(node: str, sae: str, path: str, **params: str) -> tuple[int, Any]:
            url = f"https://127.0.0.1:{c.net.configs[node]['kme']['port']}{path}"
            async with c.session(sae).get(url, params=params) as resp:
                return resp.status, await resp.json()

        status, caps = await skip_get("A", "sae-a", "/capabilities")
        assert status == 200 and caps["localSystemID"] == "sae-a" and caps["remoteSystemID"] == ["sae-c"]
        status, got = await skip_get("A", "sae-a", "/key", remoteSystemID="sae-c")
        assert status == 200, got
        # the relay holds nothing for the SAEs, and the far end gives the key once
        status, body = await skip_get("B", "sae-c", f"/key/{got['keyId']}", remoteSystemID="sae-a")
        assert status in (400, 401), body
        status, body = await skip_get("C", "sae-c", f"/key/{got['keyId']}", remoteSystemID="sae-a")
        assert status == 200 and body == got
        status, body = await skip_get("C", "sae-c", f"/key/{got['keyId']}", remoteSystemID="sae-a")
        assert status == 400 and body == {"message": f"keyId {got['keyId']} is unknown or already delivered"}
        for i, hop in enumerate(c.hops):
            for n in (c.path[i], c.path[i + 1]):
                assert c.kme_bits(n, hop) == {"consumed": 256}, (n, hop)
        assert c.agent("B").kme.relay.relayed == 1
