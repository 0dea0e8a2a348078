"""Trusted relay under faults (agent/kme/relay.py): aborts along the whole path, staggered timeouts,
persisted pads, divergence caught by the digests, INTERNAL applications, purge of removed applications.

Chains of real agents provisioned as controller/provision.plan_session writes them (the ``chain``
helper of test_kme_relay.py). Node ids sort B < A < D < C, so on A-B-C-D the hop A-B takes its pad by
``reserve`` at B, B-C is drawn by B, and C-D by ``reserve`` at D.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from pathlib import Path

import pytest
from lxml import etree

from agent.keystore import KeyStore
from agent.kme.etsi014 import new_request_id
from agent.kme.relay import ReserveMsg
from agent.kme.store import KmeStore, _journal, tag
from tests.functional.agents import AgentFactory, wait_until
from tests.functional.test_kme_relay import Chain, chain

pytestmark = pytest.mark.asyncio

NODE_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"


async def _settled(c: Chain) -> None:
    """Wait until no node has an abort left to deliver."""

    async def quiet() -> bool:
        for n in c.path:
            c.agent(n).kme._wake_aborts()
            if await c.agent(n).kme.store.aborting():
                return False
        return True

    for _ in range(200):
        if await quiet():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("aborts did not settle")


Snapshot = dict[tuple[str, str], collections.Counter[str]]


def _snapshot(c: Chain) -> Snapshot:
    return {(n, h): c.kme_bits(n, h) for i, h in enumerate(c.hops) for n in (c.path[i], c.path[i + 1])}


async def _all_discarded(c: Chain, bits: int | list[int], before: Snapshot | None = None) -> None:
    """Since ``before``, both ends of each hop discarded exactly ``bits`` (per hop, or the same for
    every hop) of its key for the request and consumed none; nothing waits for a slave or a relay op."""
    per_hop = bits if isinstance(bits, list) else [bits] * len(c.hops)
    for (n, h), now in _snapshot(c).items():
        was = (before or {}).get((n, h), collections.Counter())
        want = per_hop[c.hops.index(h)]
        assert now["discarded"] - was["discarded"] == want, (n, h, now, was)
        assert now["consumed"] == was["consumed"], (n, h, now, was)
    for n in c.path:
        assert await c.agent(n).kme.store.waiting_keys() == 0, n
        assert await c.agent(n).kme.store.pads() == 0, n


async def _alarm(client: object) -> str:
    while True:
        note = await asyncio.wait_for(client.notifications.get(), 5)  # type: ignore[attr-defined]
        if etree.QName(note.body).localname == "alarm":
            return str(etree.tostring(note.body, encoding="unicode"))


# --- items 1 and 2: aborts along the whole path, staggered timeouts ---------------------------------


async def test_hung_relay_times_out_downstream_first_and_everything_is_discarded(
    tmp_path: Path, start_agent: AgentFactory
) -> None:
    async with chain(tmp_path, start_agent, ["A", "B", "C", "D"], peer_timeout_s=0.5) as c:
        # a first request teaches the master the path length (3 hops)
        status, data = await c.enc("sae-a", "sae-c", number=1, size=256)
        assert status == 200, data
        assert c.agent("A").kme.relay._hops[c.virt] == 3
        status, got = await c.dec("sae-c", "sae-a", [data["keys"][0]["key_ID"]])
        assert status == 200 and got["keys"] == data["keys"]
        before = _snapshot(c)

        release = asyncio.Event()

        async def hang(rid: str, key: bytes) -> bytes:
            await release.wait()
            return key

        c.agent("C").kme.relay.fault = hang
        status, body = await c.enc("sae-a", "sae-c", number=2, size=256)
        # B gave up on C (its budget is the shorter one) and told A, which had not given up yet
        assert status == 503, body
        ids = c.net.ids
        assert f"node {ids['C']}'s KME did not answer (timeout)" in body["message"], body
        assert f"on the hop from node {ids['B']}" in body["message"], body
        # B's abort reaches C while C still hangs; released, C then takes nothing for the last hop
        await wait_until(lambda: c.agent("C").kme.stats.aborts_received >= 1, timeout_s=10)
        release.set()
        await _settled(c)
        await _all_discarded(c, [512, 512, 0], before)


async def test_abort_after_a_crash_at_the_master_reaches_the_far_end(
    tmp_path: Path, start_agent: AgentFactory
) -> None:
    async with chain(tmp_path, start_agent, ["A", "B", "C", "D"]) as c:
        status, data = await c.enc("sae-a", "sae-c", number=2, size=256)
        assert status == 200, data
        rid = data["keys"][0]["key_ID"]
        assert await c.agent("D").kme.store.waiting_keys() == 2
        ab = c.hops[0]
        # A stops as if it crashed after the chain answered but before the request was closed: its
        # journal still says pending (the state of a crash at that point)
        kme = c.agent("A").kme
        ranges = kme.keystore.ranges_of(ab, tag(rid))

        def pending(b: object) -> None:
            _journal(
                b,  # type: ignore[arg-type]
                request_id=rid,
                qkdl_id=ab,
                peer=c.net.ids["B"],
                role="draw",
                master="sae-a",
                slave="sae-c",
                size=256,
                count=2,
                ranges=ranges,
            )

        await kme.store.call(pending, "test: a request left pending")
        await c.agent("C").stop()  # the abort cannot go all the way at first
        await c.agent("A").stop()
        await c.net.start(start_agent, only=["A"])
        # the restarted A aborts the request at B, B passes it on and retries until C is back
        await wait_until(lambda: c.kme_bits("B", c.hops[1])["discarded"] == 512, timeout_s=10)
        assert len(await c.agent("B").kme.store.aborting()) == 1
        await c.agent("B").stop()
        await c.net.start(start_agent, only=["B", "C"])
        await _settled(c)
        await _all_discarded(c, 512)


async def test_relay_down_then_restarted_abort_is_delivered(
    tmp_path: Path, start_agent: AgentFactory
) -> None:
    async with chain(tmp_path, start_agent, ["A", "B", "C", "D"]) as c:
        await c.agent("D").stop()
        status, body = await c.enc("sae-a", "sae-c", number=2, size=256)
        assert status == 503, body
        assert f"node {c.net.ids['D']}'s KME did not answer (unreachable)" in body["message"], body
        # C > D: C asked D to reserve the last pad and got no answer; that abort is on disk at C and
        # survives C's restart (D may or may not have taken the pad)
        assert len(await c.agent("C").kme.store.aborting()) == 1
        await c.agent("C").stop()
        await c.net.start(start_agent, only=["C", "D"])
        await _settled(c)
        # D never got the reserve: nothing was taken on the last hop, at either end
        await _all_discarded(c, [512, 512, 0])


# --- item 3: reserved pads on disk ----------------------------------------------------------------


async def test_reserved_pad_survives_a_restart_and_expires_accounted(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    ks = KeyStore(path)
    ks.add_block("l1", "b0", bytes(range(64)))
    ks.close()
    rid = "01890a5d-ac96-774b-bcce-b302099a8057"
    store = KmeStore(path)
    await store.start()
    ranges, pad = await store.reserve_pad(request_id=rid, qkdl_id="l1", peer="n1", bits=128)
    await store.close()
    store = KmeStore(path)
    await store.start()
    assert await store.pads() == 1
    assert await store.take_pad(rid, "l1", "other-node") is None  # only for the node it was reserved for
    assert await store.take_pad(rid, "l1", "n1") == pad
    assert await store.take_pad(rid, "l1", "n1") is None  # once
    rid2 = "01890a5d-ac96-774b-bcce-b302099a8058"
    await store.reserve_pad(request_id=rid2, qkdl_id="l1", peer="n1", bits=64)
    assert await store.expire_pads(3600) == 0
    assert await store.expire_pads(-1) == 64
    assert await store.pads() == 0
    await store.close()
    ks = KeyStore(path)
    rows = {(r.consumer, r.kind): r.nbits for r in ks.accounting("l1")}
    assert rows == {(tag(rid), "consumed"): 128, (tag(rid2), "discarded"): 64}
    assert ks.stored_bits("l1") == 512 - 192
    ks.close()
    assert ranges and sum(r.nbits for r in ranges) == 128


async def test_pad_reserved_for_a_relay_that_never_comes_is_discarded(
    tmp_path: Path, start_agent: AgentFactory
) -> None:
    async with chain(tmp_path, start_agent, ["A", "B", "C"]) as c:
        ab = c.hops[0]
        # A reserves a pad at B (the drawing end of A-B); its relay op never comes
        msg = ReserveMsg(c.net.ids["A"], new_request_id(), ab, c.virt, "sae-a", "sae-c", 256, 1)
        answer = await c.agent("B").kme.relay.serve(msg)
        assert sum(r[2] for r in answer["ranges"]) == 256
        assert c.kme_bits("B", ab) == {"consumed": 256}
        # the reserve survives a restart of B
        await c.agent("B").stop()
        await c.net.start(start_agent, only=["B"])
        assert await c.agent("B").kme.store.pads() == 1
        # and once it is too old it is erased, its bits accounted as discarded
        await c.agent("B").kme.relay.housekeeping(pad_ttl_s=-1)
        assert await c.agent("B").kme.store.pads() == 0
        assert c.kme_bits("B", ab) == {"discarded": 256}


# --- item 4: divergence on a relay path ----------------------------------------------------------


async def test_faulty_relay_is_caught_by_the_end_to_end_digest(
    tmp_path: Path, start_agent: AgentFactory
) -> None:
    async with chain(tmp_path, start_agent, ["A", "B", "C"]) as c, c.net.agents["C"].client() as nc:
        await nc.create_subscription()

        async def flip(rid: str, key: bytes) -> bytes:
            return bytes([key[0] ^ 1]) + key[1:]

        c.agent("B").kme.relay.fault = flip
        status, body = await c.enc("sae-a", "sae-c", number=2, size=256)
        assert status == 503, body
        assert body["message"].startswith(f"key divergence detected on VIRT link {c.virt}"), body
        assert "end-to-end digest" in body["message"]
        note = await _alarm(nc)
        assert "key divergence" in note and "CRITICAL" in note
        assert c.agent("C").kme.stats.divergences == 1
        await _settled(c)
        await _all_discarded(c, 512)


async def test_tampered_relay_key_store_is_caught_by_the_hop_digest(
    tmp_path: Path, start_agent: AgentFactory
) -> None:
    async with (
        chain(tmp_path, start_agent, ["A", "B", "C"]) as c,
        c.net.agents["B"].client() as nb,
        c.net.agents["C"].client() as nc,
    ):
        await nb.create_subscription()
        await nc.create_subscription()
        bc = c.hops[1]
        # B draws the B-C pads; its key store file is tampered with between requests
        db = Path(c.net.configs["B"]["data_dir"]) / "keys.sqlite"
        with sqlite3.connect(db) as conn:
            n = conn.execute(
                "UPDATE blocks SET key = randomblob(length(key)) WHERE qkdl_id = ? AND key IS NOT NULL", (bc,)
            ).rowcount
        assert n > 0
        status, body = await c.enc("sae-a", "sae-c", number=2, size=256)
        assert status == 503, body
        ids = c.net.ids
        assert body["message"].startswith(
            f"key divergence detected on link {bc} between nodes {ids['B']} and {ids['C']}"
        ), body
        for client in (nb, nc):
            assert "key divergence" in await _alarm(client)
        await _settled(c)
        await _all_discarded(c, 512)
        # no SAE got anything: the slave has no key to fetch
        assert await c.agent("C").kme.store.waiting_keys() == 0


# --- item 5: INTERNAL applications, several next hops ------------------------------------------------


async def test_relay_needs_its_internal_application(tmp_path: Path, start_agent: AgentFactory) -> None:
    async with chain(tmp_path, start_agent, ["A", "B", "C"]) as c:
        ab = c.hops[0]
        # the INTERNAL application of B on A-B now names another VIRT link: B may not relay this one
        root = etree.fromstring(c.plan.edits[c.net.ids["B"]])
        apps = root.find(f"{{{NODE_NS}}}qkd_applications")
        assert apps is not None
        for app in apps:
            if app.findtext(f"{{{NODE_NS}}}backing_qkdl_id") == ab:
                app.find(f"{{{NODE_NS}}}server_app_id").text = "urn:qsdn:relay:another-virt-link"  # type: ignore[union-attr]
        edit = (
            f'<qkd_node xmlns="{NODE_NS}"><qkdn_id>{c.net.ids["B"]}</qkdn_id>'
            + etree.tostring(apps, encoding="unicode")
            + "</qkd_node>"
        )
        async with c.net.agents["B"].client() as nb:
            await nb.edit_config(edit)
        status, body = await c.enc("sae-a", "sae-c", number=1, size=256)
        assert status == 503, body
        assert f"node {c.net.ids['B']}'s KME refused the hop" in body["message"], body
        assert "no INTERNAL application here reserves relay capacity" in body["message"], body
        # refused before anything was taken
        for n in c.path:
            for h in c.hops:
                assert c.kme_bits(n, h) == {}, (n, h)


async def test_several_next_hops_are_a_multicast_branch_and_refused(
    tmp_path: Path, start_agent: AgentFactory
) -> None:
    async with chain(tmp_path, start_agent, ["A", "B", "C"]) as c:
        other = "00000000-0000-4000-8000-0000000000ff"
        edit = (
            f'<qkd_node xmlns="{NODE_NS}"><qkdn_id>{c.net.ids["B"]}</qkdn_id><qkd_links><qkd_link>'
            f"<qkdl_id>{c.virt}</qkdl_id><virt_next_hop>{other}</virt_next_hop>"
            "</qkd_link></qkd_links></qkd_node>"
        )
        async with c.net.agents["B"].client() as nb:
            await nb.edit_config(edit)
        status, body = await c.enc("sae-a", "sae-c", number=1, size=256)
        assert status == 503, body
        assert "multicast" in body["message"] and other in body["message"], body
        for n in c.path:
            for h in c.hops:
                assert c.kme_bits(n, h) == {}, (n, h)


# --- item 6: removed applications -------------------------------------------------------------------


async def test_keys_of_a_removed_application_are_purged_and_accounted(
    tmp_path: Path, start_agent: AgentFactory
) -> None:
    async with chain(tmp_path, start_agent, ["A", "B", "C"]) as c:
        status, data = await c.enc("sae-a", "sae-c", number=3, size=256)
        assert status == 200, data
        bc = c.hops[1]
        kme = c.agent("C").kme
        assert await kme.store.waiting_keys() == 3
        assert c.kme_bits("C", bc) == {"consumed": 768}
        # the controller deletes the session at C
        async with c.net.agents["C"].client() as ncl:
            await ncl.edit_config(c.plan.removals[c.net.ids["C"]])
        await kme.relay.housekeeping()
        assert await kme.store.waiting_keys() == 0
        assert kme.relay.purged_keys == 3
        assert c.kme_bits("C", bc) == {"discarded": 768}
        assert await kme.store.aborting() == []
        # the master's end handed its keys out: they stay consumed there
        assert c.kme_bits("B", bc) == {"consumed": 768}
