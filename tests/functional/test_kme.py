"""The ETSI GS QKD 014 KME: two real agents joined by a PHYS link, SAEs over mutual TLS.

Alice's qkdn_id sorts first, so she is the link's drawing end: keys whose master is at alice travel
with ``deliver``, keys whose master is at bob with ``draw`` (agent/kme/server.py). Both flows are
exercised. Every negative case checks that no link key was consumed at either end.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import itertools
import json
import logging
import re
import sqlite3
import ssl
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from lxml import etree

from agent.config import parse_config
from agent.keystore import KeyRange, KeyStore, MissingBlockError, RangeConflictError
from agent.kme.etsi014 import key_ids, new_request_id, split_key_id
from agent.server import NetconfAgent, build_agent
from qsdn.errors import ConfigError, KeyStoreError
from qsdn.pki import Issued, client_context, create_ca, issue, load_pem, write_pem
from qsdn.ports import free_port
from qsdn.yang import SchemaContext
from tests.functional.agents import (
    NODE_NS,
    TYPES_NS,
    AgentHandle,
    pair_configs,
    phys_link_xml,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALICE_ID = "10000000-0000-4000-8000-00000000000a"
BOB_ID = "20000000-0000-4000-8000-00000000000b"
LINK = "30000000-0000-4000-8000-0000000000c1"
APP_AB = "40000000-0000-4000-8000-0000000000a1"  # master sae-a, slave sae-b
APP_BA = "40000000-0000-4000-8000-0000000000b1"  # master sae-b, slave sae-a
EMU = "urn:qsdn:yang:qsdn-qkd-emulation"


# --- PKI --------------------------------------------------------------------------------------------


@dataclass
class Pki:
    root: Path
    ca: Issued
    saes: dict[str, Issued] = field(default_factory=dict)

    def ctx(self, sae: str | None) -> ssl.SSLContext:
        return client_context(self.ca.cert_pem, self.saes[sae] if sae else None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = create_ca("qsdn test CA")
    write_pem(ca, root / "ca.crt", root / "ca.key")
    for node in ("alice", "bob"):
        leaf = issue(ca, node, server=True, client=True, ips=["127.0.0.1"], dns=["localhost"])
        write_pem(leaf, root / f"{node}.crt", root / f"{node}.key")
    p = Pki(root, ca)
    for sae in ("sae-a", "sae-b", "sae-evil"):
        p.saes[sae] = issue(ca, sae, client=True)
    p.saes["expired"] = issue(
        ca, "sae-a", client=True, days=1, not_before=datetime.now(UTC) - timedelta(days=10)
    )
    p.saes["rogue"] = issue(create_ca("rogue CA"), "sae-a", client=True)
    p.saes["not-yet"] = issue(ca, "sae-a", client=True, not_before=datetime.now(UTC) + timedelta(days=2))
    for node in ("alice", "bob"):
        p.saes[f"node-{node}"] = load_pem(root / f"{node}.crt", root / f"{node}.key")
    return p


# --- two agents with KMEs ---------------------------------------------------------------------------


def _app_xml(node: str, remote: str, app_id: str, master: str, slave: str, link: str = LINK) -> str:
    return f"""
<qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}">
  <qkdn_id>{node}</qkdn_id>
  <qkd_applications>
    <qkd_app>
      <app_id>{app_id}</app_id>
      <app_type>t:CLIENT</app_type>
      <server_app_id>{master}</server_app_id>
      <client_app_id>{slave}</client_app_id>
      <backing_qkdl_id>{link}</backing_qkdl_id>
      <local_qkdn_id>{node}</local_qkdn_id>
      <remote_qkdn_id>{remote}</remote_qkdn_id>
    </qkd_app>
  </qkd_applications>
</qkd_node>"""


@dataclass
class Lab:
    pki: Pki
    schema: SchemaContext
    cfgs: dict[str, dict[str, Any]]
    agents: dict[str, NetconfAgent] = field(default_factory=dict)
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    async def start(self, name: str) -> NetconfAgent:
        cfg = self.cfgs[name]
        agent = build_agent(parse_config(cfg, source=f"{name}.yaml"), self.schema)
        await agent.start()
        self.agents[name] = agent
        return agent

    async def stop(self, name: str) -> None:
        agent = self.agents.pop(name, None)
        if agent is not None:
            await agent.stop()

    def handle(self, name: str) -> AgentHandle:
        agent = self.agents[name]
        assert agent.port is not None
        return AgentHandle(
            agent, self.cfgs[name]["node_id"], agent.port, Path(self.cfgs[name]["data_dir"]), {}
        )

    def url(self, node: str, path: str) -> str:
        return f"https://127.0.0.1:{self.cfgs[node]['kme']['port']}{path}"

    def keystore(self, node: str) -> KeyStore:
        return self.agents[node].keystore

    def session(self, sae: str | None) -> aiohttp.ClientSession:
        key = sae or "-"
        if key not in self.sessions:
            self.sessions[key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.pki.ctx(sae)))
        return self.sessions[key]

    async def call(
        self,
        node: str,
        sae: str | None,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        params: Any = None,
    ) -> tuple[int, Any]:
        kw: dict[str, Any] = {}
        if raw is not None:
            kw["data"] = io.BytesIO(raw) if len(raw) > 100_000 else raw
            kw["headers"] = {"Content-Type": "application/json"}
        elif body is not None:
            kw["json"] = body
        async with self.session(sae).request(method, self.url(node, path), params=params, **kw) as resp:
            text = await resp.text()
            assert resp.headers.get("Content-Type", "").startswith("application/json"), text
            return resp.status, json.loads(text)

    async def enc(self, node: str, sae: str, slave: str, **body: Any) -> list[dict[str, str]]:
        status, data = await self.call(node, sae, "POST", f"/api/v1/keys/{slave}/enc_keys", body=body)
        assert status == 200, data
        return list(data["keys"])

    async def dec(self, node: str, sae: str, master: str, key_ids: list[str]) -> tuple[int, Any]:
        body = {"key_IDs": [{"key_ID": k} for k in key_ids]}
        return await self.call(node, sae, "POST", f"/api/v1/keys/{master}/dec_keys", body=body)

    def accounting(self, node: str) -> list[tuple[str, int, int, str, str]]:
        return sorted(
            (r.block_id, r.offset_bits, r.nbits, r.kind, r.consumer)
            for r in self.keystore(node).accounting(LINK)
        )

    async def close(self) -> None:
        for s in self.sessions.values():
            await s.close()
        self.sessions.clear()
        for name in list(self.agents):
            await self.stop(name)


def lab_configs(tmp: Path, pki: Pki) -> dict[str, dict[str, Any]]:
    a, b = pair_configs(tmp, length_km=10.0)
    a["node_id"], b["node_id"] = ALICE_ID, BOB_ID
    ports = {"alice": free_port(), "bob": free_port()}
    for cfg, me, other, other_id in ((a, "alice", "bob", BOB_ID), (b, "bob", "alice", ALICE_ID)):
        cfg["kme"] = {
            "port": ports[me],
            "cert": str(pki.root / f"{me}.crt"),
            "key": str(pki.root / f"{me}.key"),
            "ca": str(pki.root / "ca.crt"),
            "peer_timeout_s": 2.0,
            "peers": {other_id: {"url": f"https://127.0.0.1:{ports[other]}", "kme_id": other}},
        }
    return {"alice": a, "bob": b}


async def provision(lab: Lab) -> None:
    async with lab.handle("alice").client() as ca, lab.handle("bob").client() as cb:
        await ca.edit_config(phys_link_xml(LINK, ALICE_ID, BOB_ID, "TRANSMITTER"))
        await cb.edit_config(phys_link_xml(LINK, BOB_ID, ALICE_ID, "RECEIVER"))
        for app, master, slave in ((APP_AB, "sae-a", "sae-b"), (APP_BA, "sae-b", "sae-a")):
            await ca.edit_config(_app_xml(ALICE_ID, BOB_ID, app, master, slave))
            await cb.edit_config(_app_xml(BOB_ID, ALICE_ID, app, master, slave))


@asynccontextmanager
async def running_lab(
    tmp: Path, pki: Pki, schema: SchemaContext, *, min_bits: int = 60_000
) -> AsyncIterator[Lab]:
    lab = Lab(pki, schema, lab_configs(tmp, pki))
    try:
        await lab.start("alice")
        await lab.start("bob")
        await provision(lab)
        await wait_until(
            lambda: min(lab.keystore(n).stored_bits(LINK) for n in ("alice", "bob")) >= min_bits, timeout_s=15
        )
        yield lab
    finally:
        await lab.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, schema: SchemaContext
) -> AsyncIterator[Lab]:
    async with running_lab(tmp_path_factory.mktemp("lab"), pki, schema, min_bits=200_000) as lab:
        yield lab


def _kme_accounting_identical(lab: Lab) -> None:
    """Every range the KMEs consumed or discarded is the same at both ends (and none is counted twice)."""

    def kme_rows(node: str) -> collections.Counter[tuple[str, int, int, str, str]]:
        return collections.Counter(r for r in lab.accounting(node) if r[4].startswith("kme:"))

    assert kme_rows("alice") == kme_rows("bob")


# --- happy paths ------------------------------------------------------------------------------------


async def test_status_reports_every_field(lab: Lab) -> None:
    status, body = await lab.call("alice", "sae-a", "GET", "/api/v1/keys/sae-b/status")
    assert status == 200, body
    assert body["source_KME_ID"] == "alice"
    assert body["target_KME_ID"] == "bob"
    assert body["master_SAE_ID"] == "sae-a"
    assert body["slave_SAE_ID"] == "sae-b"
    ints = (
        "key_size",
        "stored_key_count",
        "max_key_count",
        "max_key_per_request",
        "max_key_size",
        "min_key_size",
        "max_SAE_ID_count",
    )
    for name in ints:
        assert type(body[name]) is int, name
    assert (body["key_size"], body["min_key_size"], body["max_key_size"]) == (256, 64, 4096)
    assert body["max_key_per_request"] == 128
    assert body["max_SAE_ID_count"] == 0
    assert 0 < body["stored_key_count"] <= body["max_key_count"]
    # the other end answers for the other direction
    status, body = await lab.call("bob", "sae-b", "GET", "/api/v1/keys/sae-a/status")
    assert status == 200 and body["source_KME_ID"] == "bob" and body["target_KME_ID"] == "alice"


async def test_enc_post_then_dec_post_same_bytes_once(lab: Lab) -> None:
    keys = await lab.enc("alice", "sae-a", "sae-b", number=3, size=256)
    assert len(keys) == 3
    ids = [k["key_ID"] for k in keys]
    for k in keys:
        assert str(uuid.UUID(k["key_ID"])) == k["key_ID"]
        assert len(base64.b64decode(k["key"], validate=True)) == 32
    status, got = await lab.dec("bob", "sae-b", "sae-a", ids)
    assert status == 200, got
    assert got["keys"] == keys
    # once only
    status, again = await lab.dec("bob", "sae-b", "sae-a", ids[:1])
    assert status == 400
    assert again["message"] == f"key_ID {ids[0]} is unknown or already delivered"
    # nothing of it is left at either end
    for node in ("alice", "bob"):
        assert await lab.agents[node].kme.store.waiting_keys() == 0  # type: ignore[union-attr]
    _kme_accounting_identical(lab)


async def test_enc_get_then_dec_get(lab: Lab) -> None:
    status, data = await lab.call(
        "alice", "sae-a", "GET", "/api/v1/keys/sae-b/enc_keys", params={"number": "2", "size": "512"}
    )
    assert status == 200, data
    assert [len(base64.b64decode(k["key"])) for k in data["keys"]] == [64, 64]
    for k in data["keys"]:
        status, got = await lab.call(
            "bob", "sae-b", "GET", "/api/v1/keys/sae-a/dec_keys", params={"key_ID": k["key_ID"]}
        )
        assert status == 200, got
        assert got["keys"] == [k]
    # defaults: one key of key_size
    status, data = await lab.call("alice", "sae-a", "GET", "/api/v1/keys/sae-b/enc_keys")
    assert status == 200 and len(data["keys"]) == 1 and len(base64.b64decode(data["keys"][0]["key"])) == 32
    status, _ = await lab.dec("bob", "sae-b", "sae-a", [data["keys"][0]["key_ID"]])
    assert status == 200


async def test_keys_are_fetched_in_any_grouping_and_only_once(lab: Lab) -> None:
    first = await lab.enc("alice", "sae-a", "sae-b", number=5)
    second = await lab.enc("bob", "sae-b", "sae-a", number=1)  # another pair, other direction
    third = await lab.enc("alice", "sae-a", "sae-b", number=2)
    ids = [k["key_ID"] for k in first]
    status, got = await lab.dec("bob", "sae-b", "sae-a", [ids[3], ids[0]])
    assert status == 200 and got["keys"] == [first[3], first[0]]
    # keys of two requests in one call, in any order
    status, got = await lab.dec(
        "bob", "sae-b", "sae-a", [third[1]["key_ID"], ids[4], ids[1], third[0]["key_ID"]]
    )
    assert status == 200 and got["keys"] == [third[1], first[4], first[1], third[0]]
    # all or nothing: one delivered key_ID refuses the whole call, and the others stay
    status, body = await lab.dec("bob", "sae-b", "sae-a", [ids[2], ids[0]])
    assert status == 400 and body["message"] == f"key_ID {ids[0]} is unknown or already delivered"
    # a key of another pair is unknown to this pair
    status, body = await lab.dec("bob", "sae-b", "sae-a", [second[0]["key_ID"]])
    assert status == 400 and "unknown or already delivered" in body["message"]
    # a key_ID of this request beyond its keys
    beyond = ids[0][:15] + "07f" + ids[0][18:]
    status, body = await lab.dec("bob", "sae-b", "sae-a", [beyond])
    assert status == 400 and body["message"] == f"key_ID {beyond} is unknown or already delivered"
    status, got = await lab.dec("bob", "sae-b", "sae-a", [ids[2]])
    assert status == 200 and got["keys"] == [first[2]]
    status, got = await lab.dec("alice", "sae-a", "sae-b", [second[0]["key_ID"]])
    assert status == 200 and got["keys"] == second
    # upper-case key_IDs are the same key_IDs
    more = await lab.enc("alice", "sae-a", "sae-b", number=1)
    status, got = await lab.dec("bob", "sae-b", "sae-a", [more[0]["key_ID"].upper()])
    assert status == 200 and got["keys"][0]["key"] == more[0]["key"]
    for node in ("alice", "bob"):
        assert await lab.agents[node].kme.store.waiting_keys() == 0  # type: ignore[union-attr]


async def test_key_ids_are_version_7_uuids_derived_per_request() -> None:
    rid = new_request_id()
    ids = key_ids(rid, 128)
    assert ids[0] == rid and len(set(ids)) == 128
    for i, k in enumerate(ids):
        u = uuid.UUID(k)
        assert (u.version, u.variant, str(u)) == (7, uuid.RFC_4122, k)
        assert split_key_id(k) == (rid, i)
    later = new_request_id()
    assert later[:13] >= rid[:13]  # time-ordered to the millisecond (append-only tables)
    assert split_key_id(str(uuid.uuid4())) is None


async def test_master_at_the_non_drawing_end(lab: Lab) -> None:
    """sae-b's KME (bob) asks alice to draw; alice keeps the keys for sae-a."""
    keys = await lab.enc("bob", "sae-b", "sae-a", number=5, size=128, extension_optional=[{"x-note": 1}])
    status, got = await lab.dec("alice", "sae-a", "sae-b", [k["key_ID"] for k in keys])
    assert status == 200 and got["keys"] == keys
    _kme_accounting_identical(lab)


async def test_both_directions_concurrently_stay_identical(lab: Lab) -> None:
    async def one(master_node: str, master: str, slave_node: str, slave: str, n: int) -> None:
        keys = await lab.enc(master_node, master, slave, number=n, size=256)
        status, got = await lab.dec(slave_node, slave, master, [k["key_ID"] for k in keys])
        assert status == 200 and got["keys"] == keys

    jobs = []
    for i in range(24):
        jobs.append(one("alice", "sae-a", "bob", "sae-b", 1 + i % 4))
        jobs.append(one("bob", "sae-b", "alice", "sae-a", 1 + i % 3))
    await asyncio.gather(*jobs)
    _kme_accounting_identical(lab)
    # no range was handed out twice at either end
    for node in ("alice", "bob"):
        rows = [r for r in lab.accounting(node) if r[4].startswith("kme:")]
        seen: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for block, off, n, _kind, _c in rows:
            seen[block].append((off, off + n))
        for spans in seen.values():
            spans.sort()
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


async def test_keys_never_reach_the_logs(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keys = await lab.enc("alice", "sae-a", "sae-b", number=2)
    keys += await lab.enc("bob", "sae-b", "sae-a", number=2)
    await lab.dec("bob", "sae-b", "sae-a", [k["key_ID"] for k in keys[:2]])
    await lab.dec("alice", "sae-a", "sae-b", [k["key_ID"] for k in keys[2:]])
    text = caplog.text
    for k in keys:
        raw = base64.b64decode(k["key"])
        for needle in (k["key"], raw.hex(), raw[:8].hex(), repr(raw[:8])):
            assert needle not in text


# --- refused connections ----------------------------------------------------------------------------


@pytest.mark.parametrize("who", [None, "expired", "rogue", "not-yet"])
async def test_bad_client_certificate_fails_the_handshake(lab: Lab, who: str | None) -> None:
    before = (lab.accounting("alice"), lab.accounting("bob"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=lab.pki.ctx(who))) as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.post(lab.url("alice", "/api/v1/keys/sae-b/enc_keys"), json={"number": 1}) as resp:
                await resp.read()
    assert (lab.accounting("alice"), lab.accounting("bob")) == before


async def test_tls_below_1_2_is_refused(lab: Lab) -> None:
    ctx = lab.pki.ctx("sae-a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            async with s.get(lab.url("alice", "/api/v1/keys/sae-b/status")) as resp:
                await resp.read()


# --- table-driven negative cases --------------------------------------------------------------------

UNKNOWN = "5f0e2a14-9a7b-4b8e-8a57-000000000000"
ENC_A = "/api/v1/keys/sae-b/enc_keys"
DEC_B = "/api/v1/keys/sae-a/dec_keys"


@dataclass(frozen=True)
class Case:
    name: str
    node: str
    sae: str
    method: str
    path: str
    status: int
    message: str  # regular expression searched in the ETSI message
    body: Any = None
    raw: bytes | None = None
    params: Any = None


def _post(name: str, body: Any, message: str, status: int = 400) -> Case:
    if isinstance(body, bytes):
        return Case(name, "alice", "sae-a", "POST", ENC_A, status, message, raw=body)
    return Case(name, "alice", "sae-a", "POST", ENC_A, status, message, body=body)


def _get(name: str, params: Any, message: str) -> Case:
    return Case(name, "alice", "sae-a", "GET", ENC_A, 400, message, params=params)


def _dec(name: str, body: Any, message: str, status: int = 400) -> Case:
    if isinstance(body, bytes):
        return Case(name, "bob", "sae-b", "POST", DEC_B, status, message, raw=body)
    return Case(name, "bob", "sae-b", "POST", DEC_B, status, message, body=body)


CASES = [
    # enc_keys POST: the body
    _post("malformed JSON", b'{"number": 1', r"^malformed JSON body: Expecting"),
    _post("JSON array", b"[]", r"a JSON object is expected, not an array"),
    _post("JSON string", b'"number"', r"a JSON object is expected, not a string"),
    _post("not UTF-8", b'{"number": "\xff"}', r"not UTF-8"),
    _post("duplicate member", b'{"number": 1, "number": 2}', r"member 'number' appears twice"),
    _post("NaN", b'{"number": NaN}', r"NaN is not a JSON number"),
    _post("number 0", {"number": 0}, r"^number must be a positive integer, got 0$"),
    _post("number negative", {"number": -3}, r"^number must be a positive integer, got -3$"),
    _post("number too many", {"number": 129}, r"^number 129 exceeds max_key_per_request 128$"),
    _post("number huge", {"number": 10**30}, r"exceeds max_key_per_request 128"),
    _post("number as string", {"number": "1"}, r"^number must be an integer, not a string$"),
    _post(
        "number with fraction", {"number": 1.5}, r"^number must be an integer, not a number with a fraction$"
    ),
    _post("number 1.0", b'{"number": 1.0}', r"^number must be an integer"),
    _post("number boolean", {"number": True}, r"^number must be an integer, not a boolean$"),
    _post("size null", {"size": None}, r"^size must be an integer, not null$"),
    _post("size not multiple of 8", {"size": 100}, r"^size 100 is not a multiple of 8$"),
    _post("size too small", {"size": 56}, r"^size 56 is below min_key_size 64$"),
    _post("size zero", {"size": 0}, r"^size 0 is below min_key_size 64$"),
    _post("size too big", {"size": 4104}, r"^size 4104 exceeds max_key_size 4096$"),
    _post("size negative", {"size": -256}, r"^size -256 is below min_key_size 64$"),
    _post("unknown member", {"number": 1, "count": 2}, r"^unknown member 'count' in the request"),
    _post(
        "unknown mandatory extension",
        {"extension_mandatory": [{"x-qsdn-route": "fast"}]},
        r"^mandatory extension 'x-qsdn-route' is not supported by this KME$",
    ),
    _post("extension_mandatory not array", {"extension_mandatory": {"a": 1}}, r"must be an array of objects"),
    _post("extension_optional not array", {"extension_optional": "a"}, r"must be an array of objects"),
    _post(
        "additional slave SAEs",
        {"additional_slave_SAE_IDs": ["sae-c"]},
        r"at most 0 \(max_SAE_ID_count\): key multicast is not supported",
    ),
    _post("additional slave SAEs not a list", {"additional_slave_SAE_IDs": "sae-c"}, r"array of strings"),
    _post("body too large", b" " * (1 << 20) + b"{}", r"exceeds 1048576 bytes"),
    Case(
        "query on POST",
        "alice",
        "sae-a",
        "POST",
        ENC_A,
        400,
        r"in the body, not the query",
        body={},
        params={"number": "1"},
    ),
    # enc_keys GET: the query
    _get("number not digits", {"number": "abc"}, r"^number must be a decimal integer, got 'abc'$"),
    _get("number negative (query)", {"number": "-5"}, r"^number must be a positive integer, got '-5'$"),
    _get("number 0 (query)", {"number": "0"}, r"^number must be a positive integer, got 0$"),
    _get("number too many (query)", {"number": "500"}, r"^number 500 exceeds max_key_per_request 128$"),
    _get("size not multiple of 8 (query)", {"size": "12"}, r"^size 12 is not a multiple of 8$"),
    _get("size too big (query)", {"size": "8192"}, r"^size 8192 exceeds max_key_size 4096$"),
    _get("size plus sign", {"size": "+256"}, r"^size must be a decimal integer"),
    _get("repeated parameter", [("number", "1"), ("number", "2")], r"'number' is given more than once"),
    _get("unknown parameter", {"count": "1"}, r"^unknown query parameter 'count'"),
    # dec_keys
    _dec("dec malformed JSON", b"{", r"^malformed JSON body"),
    _dec("dec empty body", b"", r"the request body is empty"),
    _dec("dec without key_IDs", {}, r"^key_IDs is required$"),
    _dec("dec key_IDs not array", {"key_IDs": "x"}, r"^key_IDs must be an array, not a string$"),
    _dec("dec key_IDs empty", {"key_IDs": []}, r"^key_IDs is empty"),
    _dec(
        "dec key_ID not UUID", {"key_IDs": [{"key_ID": "not-a-uuid"}]}, r"^key_ID 'not-a-uuid' is not a UUID$"
    ),
    _dec("dec key_ID number", {"key_IDs": [{"key_ID": 5}]}, r"^key_ID must be a string, not an integer$"),
    _dec("dec entry not object", {"key_IDs": ["abc"]}, r"each key_IDs entry must be an object"),
    _dec("dec entry without key_ID", {"key_IDs": [{}]}, r"a key_IDs entry has no key_ID"),
    _dec("dec entry unknown member", {"key_IDs": [{"key_ID": UNKNOWN, "key": "x"}]}, r"unknown member 'key'"),
    _dec(
        "dec unknown key_ID",
        {"key_IDs": [{"key_ID": UNKNOWN}]},
        rf"^key_ID {UNKNOWN} is unknown or already delivered$",
    ),
    _dec("dec duplicate key_IDs", {"key_IDs": [{"key_ID": UNKNOWN}] * 2}, r"is asked for more than once"),
    _dec(
        "dec too many key_IDs",
        {"key_IDs": [{"key_ID": str(uuid.uuid4())} for _ in range(129)]},
        r"^129 key_IDs exceed max_key_per_request 128$",
    ),
    _dec("dec unknown top-level member", {"key_IDs": [{"key_ID": UNKNOWN}], "x": 1}, r"unknown member 'x'"),
    Case(
        "dec GET without key_ID",
        "bob",
        "sae-b",
        "GET",
        DEC_B,
        400,
        r"^the key_ID query parameter is required$",
    ),
    Case("dec GET bad key_ID", "bob", "sae-b", "GET", DEC_B, 400, r"is not a UUID", params={"key_ID": "x"}),
    Case(
        "dec GET unknown key_ID",
        "bob",
        "sae-b",
        "GET",
        DEC_B,
        400,
        r"unknown or already delivered",
        params={"key_ID": UNKNOWN},
    ),
    Case(
        "dec GET extra parameter",
        "bob",
        "sae-b",
        "GET",
        DEC_B,
        400,
        r"unknown query parameter 'number'",
        params={"key_ID": UNKNOWN, "number": "1"},
    ),
    # status
    Case(
        "status with a parameter",
        "alice",
        "sae-a",
        "GET",
        "/api/v1/keys/sae-b/status",
        400,
        r"status takes no query parameters",
        params={"x": "1"},
    ),
    # who may ask
    Case(
        "wrong SAE enc_keys",
        "alice",
        "sae-evil",
        "POST",
        ENC_A,
        401,
        r"^SAE sae-evil is not authorised to get keys for slave SAE sae-b at KME alice$",
        body={"number": 1},
    ),
    Case("wrong SAE status", "alice", "sae-evil", "GET", "/api/v1/keys/sae-b/status", 401, r"not authorised"),
    Case("wrong SAE malformed body", "alice", "sae-evil", "POST", ENC_A, 401, r"not authorised", raw=b"{"),
    Case(
        "slave SAE not authorised",
        "alice",
        "sae-a",
        "POST",
        "/api/v1/keys/sae-evil/enc_keys",
        401,
        r"^SAE sae-a is not authorised to get keys for slave SAE sae-evil at KME alice$",
        body={},
    ),
    Case(
        "unknown slave, GET", "alice", "sae-a", "GET", "/api/v1/keys/nobody/enc_keys", 401, r"not authorised"
    ),
    Case(
        "dec_keys with the master's certificate",
        "bob",
        "sae-a",
        "POST",
        DEC_B,
        401,
        r"^SAE sae-a is not authorised to get keys of master SAE sae-a at KME bob$",
        body={"key_IDs": [{"key_ID": UNKNOWN}]},
    ),
    Case(
        "dec_keys by a stranger",
        "bob",
        "sae-evil",
        "POST",
        DEC_B,
        401,
        r"not authorised",
        body={"key_IDs": [{"key_ID": UNKNOWN}]},
    ),
    Case(
        "dec_keys for an unrelated master",
        "bob",
        "sae-b",
        "POST",
        "/api/v1/keys/sae-evil/dec_keys",
        401,
        r"of master SAE sae-evil",
        body={"key_IDs": [{"key_ID": UNKNOWN}]},
    ),
    Case(
        "invalid SAE ID in the path",
        "alice",
        "sae-a",
        "POST",
        "/api/v1/keys/sae%20b/enc_keys",
        400,
        r"slave_SAE_ID 'sae b' is not a valid SAE ID",
        body={},
    ),
    Case(
        "SAE calling the peer channel",
        "alice",
        "sae-a",
        "POST",
        "/qsdn/kme/v1/batch",
        401,
        r"is not the KME configured for node",
        body={
            "v": 1,
            "source_qkdn_id": BOB_ID,
            "ops": [
                {
                    "op": "deliver",
                    "request_id": UNKNOWN,
                    "qkdl_id": LINK,
                    "master_SAE_ID": "sae-b",
                    "slave_SAE_ID": "sae-a",
                    "size": 256,
                    "key_IDs": [UNKNOWN],
                    "ranges": [["x", 0, 256]],
                    "digest": "0" * 64,
                }
            ],
        },
    ),
    Case(
        "malformed peer message",
        "alice",
        "sae-a",
        "POST",
        "/qsdn/kme/v1/batch",
        400,
        r"^malformed peer message: unsupported version",
        body={"v": 9},
    ),
    Case("old peer path", "alice", "sae-a", "POST", "/qsdn/kme/v1/deliver", 404, r"Not Found", body={}),
    # HTTP
    Case("unknown method path", "alice", "sae-a", "GET", "/api/v1/keys/sae-b/keys", 404, r"Not Found"),
    Case("wrong method", "alice", "sae-a", "PUT", ENC_A, 405, r"Method Not Allowed", body={}),
]


async def test_negative_cases_consume_nothing(lab: Lab) -> None:
    assert len(CASES) >= 50
    before = (lab.accounting("alice"), lab.accounting("bob"))
    failures = []
    for case in CASES:
        status, body = await lab.call(
            case.node, case.sae, case.method, case.path, body=case.body, raw=case.raw, params=case.params
        )
        message = body.get("message", "") if isinstance(body, dict) else ""
        if status != case.status or not re.search(case.message, message):
            failures.append(f"{case.name}: {status} {body}")
        if (lab.accounting("alice"), lab.accounting("bob")) != before:
            failures.append(f"{case.name}: link key was consumed")
            before = (lab.accounting("alice"), lab.accounting("bob"))
        if "details" in body:
            assert isinstance(body["details"], list) and all(isinstance(d, dict) for d in body["details"])
    assert not failures, "\n".join(failures)
    assert (lab.accounting("alice"), lab.accounting("bob")) == before


# --- the peer channel -------------------------------------------------------------------------------


async def test_peer_batch_ops_are_judged_one_by_one(lab: Lab) -> None:
    before = (lab.accounting("alice"), lab.accounting("bob"))
    rid = new_request_id()
    common = {"qkdl_id": LINK, "master_SAE_ID": "sae-a", "slave_SAE_ID": "sae-b", "size": 256, "number": 1}
    ops = [
        {"op": "abort", "request_id": rid, "qkdl_id": LINK, "reason": "test"},
        {"op": "deliver", "request_id": rid},  # malformed
        {"op": "draw", "request_id": new_request_id(), **common},  # bob does not draw for alice
        {
            "op": "deliver",
            "request_id": new_request_id(),
            **common,
            "slave_SAE_ID": "sae-evil",
            "ranges": [["x", 0, 256]],
            "digest": "0" * 64,
        },
        {
            "op": "deliver",
            "request_id": new_request_id(),
            **common,
            "ranges": [["x", 0, 256]],
            "digest": "0" * 64,
        },
        {"op": "draw", "request_id": str(uuid.uuid4()), **common},  # not a first key_ID
        {"op": "teleport"},
    ]
    body = {"v": 1, "source_qkdn_id": ALICE_ID, "ops": ops}
    status, data = await lab.call("bob", "node-alice", "POST", "/qsdn/kme/v1/batch", body=body)
    assert status == 200, data
    got = [(r["status"], r.get("reason")) for r in data["results"]]
    assert got == [
        (200, None),
        (400, "malformed"),
        (400, "role"),
        (401, "unauthorised"),
        (503, "missing-block"),
        (400, "malformed"),
        (400, "malformed"),
    ], data
    assert data["results"][0]["erased"] == 0 and data["results"][0]["ranges"] == []
    assert (lab.accounting("alice"), lab.accounting("bob")) == before
    # a node certificate speaking for another node is refused as a whole
    body = {"v": 1, "source_qkdn_id": ALICE_ID, "ops": ops[:1]}
    status, data = await lab.call("alice", "node-bob", "POST", "/qsdn/kme/v1/batch", body=body)
    assert status == 401 and "is not the KME configured for node" in data["message"]
    assert data["details"] == [{"reason": "unauthorised"}]


# --- configuration ----------------------------------------------------------------------------------


async def test_a_vanishing_application_revokes_access(lab: Lab) -> None:
    extra = "40000000-0000-4000-8000-0000000000e1"
    async with lab.handle("alice").client() as c:
        await c.edit_config(_app_xml(ALICE_ID, BOB_ID, extra, "sae-evil", "sae-b"))
        status, _ = await lab.call("alice", "sae-evil", "GET", "/api/v1/keys/sae-b/status")
        assert status == 200
        await c.edit_config(
            f'<qkd_node xmlns="{NODE_NS}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
            f"<qkd_applications><qkd_app nc:operation='delete'><app_id>{extra}</app_id></qkd_app>"
            "</qkd_applications></qkd_node>"
        )
    status, body = await lab.call("alice", "sae-evil", "GET", "/api/v1/keys/sae-b/status")
    assert status == 401, body


async def test_virt_backing_link_without_a_next_hop_is_refused(lab: Lab) -> None:
    virt = "30000000-0000-4000-8000-0000000000f1"
    app = "40000000-0000-4000-8000-0000000000f2"
    link_xml = f"""
<qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}">
  <qkdn_id>{ALICE_ID}</qkdn_id>
  <qkd_links><qkd_link>
    <qkdl_id>{virt}</qkdl_id><qkdl_enable>true</qkdl_enable>
    <qkdl_local><qkdn_id>{ALICE_ID}</qkdn_id></qkdl_local>
    <qkdl_remote><qkdn_id>{BOB_ID}</qkdn_id></qkdl_remote>
    <qkdl_type>t:VIRT</qkdl_type>
  </qkd_link></qkd_links>
</qkd_node>"""
    async with lab.handle("alice").client() as c:
        await c.edit_config(link_xml)
        await c.edit_config(_app_xml(ALICE_ID, BOB_ID, app, "sae-a", "sae-virt", link=virt))
    before = lab.accounting("alice")
    status, body = await lab.call("alice", "sae-a", "POST", "/api/v1/keys/sae-virt/enc_keys", body={})
    assert status == 503
    assert f"VIRT link {virt} has no virt_next_hop here" in body["message"]
    assert lab.accounting("alice") == before


def _kme_cfg(tmp: Path, pki: Pki, **kme: Any) -> dict[str, Any]:
    a, _ = pair_configs(tmp)
    a["kme"] = {
        "port": 8443,
        "cert": str(pki.root / "alice.crt"),
        "key": str(pki.root / "alice.key"),
        "ca": str(pki.root / "ca.crt"),
    }
    a["kme"].update(kme)
    return a


@pytest.mark.parametrize(
    ("kme", "error"),
    [
        ({"cert": "/nonexistent.crt"}, r"kme\.cert: file /nonexistent\.crt does not exist"),
        ({"port": "x"}, r"kme\.port: must be an integer"),
        ({"min_key_size": 60}, r"kme\.min_key_size: 60 is not a multiple of 8"),
        ({"default_key_size": 8192}, r"kme\.default_key_size: 8192 is not within \[64, 4096\]"),
        ({"min_key_size": 512, "max_key_size": 256}, r"kme\.min_key_size: 512 is larger than max_key_size"),
        ({"max_keys_per_request": 0}, r"kme\.max_keys_per_request: must be between 1 and 4096"),
        ({"colour": "blue"}, r"kme\.colour: unknown key"),
        (
            {"peers": {"not-a-uuid": {"url": "https://h:1", "kme_id": "b"}}},
            r"kme\.peers\.not-a-uuid: .* is not a qkdn_id",
        ),
        (
            {"peers": {BOB_ID: {"url": "http://h:1", "kme_id": "b"}}},
            rf"kme\.peers\.{BOB_ID}\.url: .* is not https://host:port",
        ),
        ({"peers": {BOB_ID: {"url": "https://h", "kme_id": "b"}}}, r"is not https://host:port"),
        ({"peers": {BOB_ID: {"url": "https://h:1"}}}, rf"kme\.peers\.{BOB_ID}\.kme_id: is required"),
        ({"peers": {BOB_ID: {"url": "https://h:1", "kme_id": "alice"}}}, r"a peer has this KME's own kme_id"),
    ],
)
async def test_kme_config_errors_name_the_key(
    tmp_path: Path, pki: Pki, kme: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_config(_kme_cfg(tmp_path, pki, **kme), source="node.yaml")


async def test_kme_config_defaults(tmp_path: Path, pki: Pki) -> None:
    cfg = parse_config(_kme_cfg(tmp_path, pki), source="node.yaml")
    assert cfg.kme is not None
    assert cfg.kme.kme_id == "alice"
    assert (cfg.kme.default_key_size, cfg.kme.min_key_size, cfg.kme.max_key_size) == (256, 64, 4096)
    assert (cfg.kme.max_keys_per_request, cfg.kme.max_key_count) == (128, 100_000)
    a, _ = pair_configs(tmp_path)
    assert parse_config(a).kme is None


# --- the key store underneath -----------------------------------------------------------------------


async def test_consume_ranges_out_of_order_all_or_nothing(tmp_path: Path) -> None:
    near, far = KeyStore(tmp_path / "near.db"), KeyStore(tmp_path / "far.db")
    try:
        blocks = [(f"{i:04d}", bytes((i * 37 + j) % 256 for j in range(40))) for i in range(4)]
        for block_id, key in blocks:
            near.add_block("L", block_id, key)
            far.add_block("L", block_id, key)
        got = [near.consume("L", n, f"c{i}") for i, n in enumerate((13, 200, 64, 300, 8))]
        for i in (3, 0, 4, 2, 1):  # announced in another order
            assert far.consume_ranges("L", got[i].ranges, f"c{i}").key == got[i].key
        assert far.stored_bits("L") == near.stored_bits("L") == 4 * 320 - 585
        with pytest.raises(RangeConflictError, match="already"):
            far.consume_ranges("L", got[1].ranges, "again")
        with pytest.raises(MissingBlockError, match="not in this key store"):
            far.consume_ranges("L", [KeyRange("0003", 0, 8), KeyRange("9999", 0, 8)], "x")
        with pytest.raises(RangeConflictError, match="overlap"):
            far.consume_ranges("L", [KeyRange("0003", 0, 16), KeyRange("0003", 8, 8)], "x")
        with pytest.raises(RangeConflictError, match="outside"):
            far.consume_ranges("L", [KeyRange("0003", 300, 64)], "x")
        with pytest.raises(KeyStoreError):
            far.consume_ranges("L", [], "x")
        assert far.stored_bits("L") == near.stored_bits("L")  # failures consumed nothing
        # a range beyond the frontier, then consume() around it, then the rest
        taken = far.consume_ranges("L", [KeyRange("0003", 200, 40)], "mid")
        rest = far.consume("L", far.stored_bits("L"), "rest")
        assert KeyRange("0003", 200, 40) not in rest.ranges
        assert far.stored_bits("L") == 0 and far.blocks("L") == []
        assert taken.nbits == 40
        assert far.consumed_bits("L") == 4 * 320
        assert far.discard_consumed("L", "mid", "test") == 40
        assert far.discarded_bits("L") == 40 and far.consumed_bits("L") == 4 * 320 - 40
        assert far.ranges_of("L", "mid") == [KeyRange("0003", 200, 40)]
    finally:
        near.close()
        far.close()


async def test_drop_link_accounts_for_out_of_order_ranges(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "k.db")
    try:
        ks.add_block("L", "a", bytes(16))
        ks.consume_ranges("L", [KeyRange("a", 64, 32)], "x")
        assert ks.stored_bits("L") == 96
        assert ks.drop_link("L") == 96
        assert ks.consumed_bits("L") + ks.discarded_bits("L") == 128
    finally:
        ks.close()


# --- failures between the two KMEs ------------------------------------------------------------------


def _corrupt(lab: Lab, node: str) -> int:
    db = Path(lab.cfgs[node]["data_dir"]) / "keys.sqlite"
    with sqlite3.connect(db) as conn:
        cur = conn.execute(
            "UPDATE blocks SET key = randomblob(length(key)) WHERE qkdl_id = ? AND key IS NOT NULL", (LINK,)
        )
        return cur.rowcount


async def test_divergence_is_detected_reported_and_discarded(
    tmp_path: Path, pki: Pki, schema: SchemaContext
) -> None:
    async with (
        running_lab(tmp_path, pki, schema, min_bits=20_000) as lab,
        lab.handle("alice").client() as ca,
        lab.handle("bob").client() as cb,
    ):
        await ca.create_subscription()
        await cb.create_subscription()
        # stop production so the corrupted blocks are the ones used next
        cut = f'<qsdn_faults xmlns="{EMU}"><fibre_cut>true</fibre_cut></qsdn_faults>'
        await ca.edit_config(phys_link_xml(LINK, ALICE_ID, BOB_ID, "TRANSMITTER", extra=cut))
        await asyncio.sleep(0.3)
        assert _corrupt(lab, "bob") > 0
        # deliver flow: alice draws, bob finds other bits
        status, body = await lab.call("alice", "sae-a", "POST", ENC_A, body={"number": 4})
        assert status == 503
        assert body["message"].startswith("key divergence detected on link " + LINK)
        # draw flow: bob asks alice to draw and finds other bits
        status, body = await lab.call(
            "bob", "sae-b", "POST", "/api/v1/keys/sae-a/enc_keys", body={"number": 2}
        )
        assert status == 503
        assert body["message"].startswith("key divergence detected on link " + LINK)
        for client in (ca, cb):
            note = await _wait_for_alarm(client)
            assert "key divergence" in note
        # aborts reach the peers: nothing waits for a slave, and the ends used up the same ranges
        for node in ("alice", "bob"):
            lab.agents[node].kme._wake_aborts()  # type: ignore[union-attr]
        await _settled(lab)
        rows_a = [r for r in lab.accounting("alice") if r[4].startswith("kme:")]
        assert rows_a and all(r[3] == "discarded" for r in rows_a)
        assert sum(r[2] for r in rows_a) == 4 * 256 + 2 * 256
        _kme_accounting_identical(lab)
        for node in ("alice", "bob"):
            assert await lab.agents[node].kme.store.waiting_keys() == 0  # type: ignore[union-attr]
        assert lab.agents["alice"].kme.stats.divergences >= 1  # type: ignore[union-attr]


async def _wait_for_alarm(client: Any) -> str:
    while True:
        note = await asyncio.wait_for(client.notifications.get(), 5)
        if etree.QName(note.body).localname == "alarm":
            return str(etree.tostring(note.body, encoding="unicode"))


async def _settled(lab: Lab) -> None:
    async def quiet() -> bool:
        for node in ("alice", "bob"):
            kme = lab.agents[node].kme
            assert kme is not None
            if await kme.store.aborting():
                return False
        return True

    for _ in range(100):
        if await quiet():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("aborts did not settle")


async def test_peer_down_discards_then_restart_keeps_undelivered_keys(
    tmp_path: Path, pki: Pki, schema: SchemaContext
) -> None:
    async with running_lab(tmp_path, pki, schema, min_bits=20_000) as lab:
        # keys made, then bob restarts before sae-b fetches them
        waiting = await lab.enc("alice", "sae-a", "sae-b", number=3)
        waiting_rev = await lab.enc("bob", "sae-b", "sae-a", number=2)
        await lab.stop("bob")
        # the peer is down: 503, the drawn key is recorded as discarded and nothing is handed out
        discarded = lab.keystore("alice").discarded_bits(LINK)
        status, body = await lab.call("alice", "sae-a", "POST", ENC_A, body={"number": 2})
        assert status == 503
        assert body["message"].startswith(
            "keys not ready: the peer KME bob could not take its part (unreachable"
        )
        assert lab.keystore("alice").discarded_bits(LINK) == discarded + 512
        assert lab.agents["alice"].kme is not None
        assert len(await lab.agents["alice"].kme.store.aborting()) == 1
        await lab.start("bob")
        # undelivered keys survived the restart, at both ends
        status, got = await lab.dec("bob", "sae-b", "sae-a", [k["key_ID"] for k in waiting])
        assert status == 200 and got["keys"] == waiting
        status, got = await lab.dec("alice", "sae-a", "sae-b", [k["key_ID"] for k in waiting_rev])
        assert status == 200 and got["keys"] == waiting_rev
        # the pending abort reaches bob, which discards the same ranges
        lab.agents["alice"].kme._wake_aborts()
        await _settled(lab)
        _kme_accounting_identical(lab)
        # and the pair still works
        keys = await lab.enc("alice", "sae-a", "sae-b", number=1)
        status, got = await lab.dec("bob", "sae-b", "sae-a", [keys[0]["key_ID"]])
        assert status == 200 and got["keys"] == keys


async def test_not_enough_key_is_503_and_consumes_nothing(
    tmp_path: Path, pki: Pki, schema: SchemaContext
) -> None:
    async with running_lab(tmp_path, pki, schema, min_bits=1) as lab:
        async with lab.handle("alice").client() as ca:
            cut = f'<qsdn_faults xmlns="{EMU}"><fibre_cut>true</fibre_cut></qsdn_faults>'
            await ca.edit_config(phys_link_xml(LINK, ALICE_ID, BOB_ID, "TRANSMITTER", extra=cut))
        await asyncio.sleep(0.3)
        stored = lab.keystore("alice").stored_bits(LINK)
        before = (lab.accounting("alice"), lab.accounting("bob"))
        n = stored // 4096 + 1
        assert n <= 128
        status, body = await lab.call("alice", "sae-a", "POST", ENC_A, body={"number": n, "size": 4096})
        assert status == 503 and body["message"].startswith(
            "keys not ready: link " + LINK + ": not enough key"
        )
        status, body = await lab.call(
            "bob", "sae-b", "POST", "/api/v1/keys/sae-a/enc_keys", body={"number": n, "size": 4096}
        )
        assert status == 503 and body["message"].startswith(
            "keys not ready: the peer KME alice has not enough key"
        )
        assert (lab.accounting("alice"), lab.accounting("bob")) == before
