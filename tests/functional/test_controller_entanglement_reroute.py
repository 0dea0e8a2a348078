"""Entanglement and mixed key sessions react to failures: real agents, configuration-level checks.

A session whose span, repeater or elementary link is lost is re-planned without the failed element and
moved in one transaction (generation *n* removed, *n + 1* created under new derived ids, its memories
moved); with no path left it is failed with the reason. Every check reads the nodes over NETCONF.

The agents run no entanglement driver here, so an elementary link going down is reported the way the
driver reports it: the node's ``entanglement_session_update`` notification, emitted by the agent's own
notification code from an :class:`~agent.drivers.base.EntanglementEvent` (the driver's callback).

Networks (spans in km; elementary links with the BSM station co-located; 10 s coherence):

* diamond: endpoints A and B (4 memories) through repeater R1 (40 + 40, preferred) or R2 (50 + 50),
  2 memories each;
* mixed: A reaches the trusted relays T (30, preferred) and U (35) by QKD; T and U reach B through the
  repeater R (40 each, R - B 40): key over A - T - R - B, or A - U - R - B.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from agent.drivers.base import EntanglementEvent
from controller.entanglement_provision import ENT_NS, elementary_link_id, key_link_id, segment_session_id
from controller.provision import derived_id, phys_link_id
from controller.service import contains
from tests.functional.agents import NODE_NS, AgentFactory, wait_until
from tests.functional.labnet import Net
from tests.functional.test_controller_entanglement_admission import CREATE, entanglement
from tests.functional.test_controller_entanglement_sessions import (
    MEMORY,
    NET,
    REPEATER,
    Lab,
    holds_nothing,
    key,
    node_config,
    running_lab,
    started,
    texts,
)

NS = {"n": NODE_NS, "e": ENT_NS}
EMU = "urn:qsdn:yang:qsdn-qkd-emulation"


@pytest.fixture
async def diamond(start_agent: AgentFactory, tmp_path: Path) -> Net:
    net = await started(
        start_agent,
        tmp_path,
        ["A", "R1", "R2", "B"],
        [
            ("a-r1", "A", "R1", 40.0),
            ("r1-b", "R1", "B", 40.0),
            ("a-r2", "A", "R2", 50.0),
            ("r2-b", "R2", "B", 50.0),
        ],
        {
            "A": ("endpoint", True, MEMORY),
            "R1": ("repeater", False, REPEATER),
            "R2": ("repeater", False, REPEATER),
            "B": ("endpoint", True, MEMORY),
        },
    )
    return net


def ids(net: Net, *names: str) -> list[str]:
    return [net.ids[n] for n in names]


async def create(lab: Lab, body: dict[str, Any]) -> str:
    status, reply = await lab.post(CREATE, {"qsdn-orchestrator:input": body})
    assert status == 200, reply
    assert reply["qsdn-orchestrator:output"]["status"] == "active"
    return str(body["session_id"])


async def entanglement_session(lab: Lab) -> str:
    return await create(lab, entanglement(lab.net, str(uuid.uuid4()), "0.9"))


async def state(lab: Lab, sid: str) -> dict[str, Any]:
    link: dict[str, Any] = (await lab.get(f"/data/{NET}/qkd_svc_link={sid}"))[
        "qsdn-orchestrator:qkd_svc_link"
    ][0]
    return link


async def runs_generation(lab: Lab, sid: str, generation: int, *names: str) -> None:
    """Every node of ``names`` holds the session's plan of ``generation`` and nothing of the others."""
    rec = lab.ctl.store.session(sid)
    assert rec is not None and rec.generation == generation
    plan = lab.ctl.session_plan(rec, full=True)
    mine = {
        segment_session_id(sid, generation, i) for i in range(len(rec.plan["segments"] if rec.plan else ()))
    }
    for name in names:
        have = await node_config(lab.net, name)
        assert contains(have, etree.fromstring(plan.edits[lab.net.ids[name]])), name
        assert set(texts(have, "//e:session/e:session_id/text()")) <= mine, name


def report_down(net: Net, name: str, ent_session: str, link_id: str | None) -> None:
    """The node's entanglement driver reports the session down (what a lost elementary link causes)."""
    net.agents[name].agent.node._on_entanglement_event(
        EntanglementEvent(
            ent_session,
            "down",
            "elementary_link_down" if link_id else "memory_exhausted",
            link_id=link_id,
        )
    )


# --------------------------------------------------------------------------------- entanglement


async def test_elementary_link_down_moves_the_session_then_fails_it_when_no_path_is_left(
    diamond: Net, tmp_path: Path
) -> None:
    a, r1, r2, b = ids(diamond, "A", "R1", "R2", "B")
    async with running_lab(diamond, tmp_path / "ctl.sqlite") as lab:
        sid = await entanglement_session(lab)
        assert (await state(lab, sid))["path"] == [a, r1, b]
        assert {m.node_id: m.memories for m in lab.ctl.memory_reservations()} == {a: 1, r1: 2, b: 1}
        # A's driver: the A-R1 elementary link is down
        report_down(diamond, "A", segment_session_id(sid, 0, 0), elementary_link_id(sid, 0, 0, 0))
        await wait_until(lambda: bool(lab.ctl.reroutes), timeout_s=20)
        ev = lab.ctl.reroutes[0]
        assert ev.ok, ev.detail
        assert ev.session_id == sid and ev.span_id == "a-r1"
        link = await state(lab, sid)
        assert link["status"] == "active" and link["path"] == [a, r2, b]
        assert link["plan"]["segment"][0]["repeaters"] == [r2]
        # one transaction: generation 1 on A, R2 and B, nothing left of generation 0 anywhere
        await runs_generation(lab, sid, 1, "A", "R2", "B")
        await holds_nothing(diamond, "R1")
        for name in ("A", "B"):
            have = await node_config(diamond, name)
            assert texts(have, "//e:session/e:session_id/text()") == [segment_session_id(sid, 1, 0)], name
            assert elementary_link_id(sid, 0, 0, 0) not in texts(have, "//e:elementary_link/e:link_id/text()")
        # the memories moved with it
        assert {m.node_id: m.memories for m in lab.ctl.memory_reservations()} == {a: 1, r2: 2, b: 1}
        # a late report about generation 0 (B saw the same loss) changes nothing
        report_down(diamond, "B", segment_session_id(sid, 0, 0), elementary_link_id(sid, 0, 0, 0))
        # now B's driver: the R2-B link is down too; A-R1 failed under this session, so no path is left
        report_down(diamond, "B", segment_session_id(sid, 1, 0), elementary_link_id(sid, 1, 0, 1))
        await wait_until(lambda: len(lab.ctl.reroutes) == 2, timeout_s=20)
        ev = lab.ctl.reroutes[1]
        assert not ev.ok and ev.span_id == "r2-b"
        link = await state(lab, sid)
        assert link["status"] == "failed"
        assert link["last_error"].startswith(
            "re-route after the loss of span r2-b failed: no entanglement path"
        )
        assert "last_error_info" in link and link["last_error_info"]["reason"] == link["last_error"]
        # failed, not torn down: the nodes still hold generation 1, and it keeps its memories until deleted
        await runs_generation(lab, sid, 1, "A", "R2", "B")
        assert {m.node_id: m.memories for m in lab.ctl.memory_reservations()} == {a: 1, r2: 2, b: 1}
        assert len(lab.ctl.reroutes) == 2
        assert await lab.delete(f"/data/{NET}/qkd_svc_link={sid}") == 204
        await holds_nothing(diamond, "A", "R1", "R2", "B")
        assert lab.ctl.memory_reservations() == []
        # the failed spans belonged to that session only: a new session may use them again
        again = await entanglement_session(lab)
        assert (await state(lab, again))["path"] == [a, r1, b]


async def test_a_down_report_without_the_link_avoids_the_whole_segment(diamond: Net, tmp_path: Path) -> None:
    a, r2, b = ids(diamond, "A", "R2", "B")
    async with running_lab(diamond, tmp_path / "ctl.sqlite") as lab:
        sid = await entanglement_session(lab)
        report_down(diamond, "B", segment_session_id(sid, 0, 0), None)
        await wait_until(lambda: bool(lab.ctl.reroutes), timeout_s=20)
        assert lab.ctl.reroutes[0].ok and lab.ctl.reroutes[0].span_id == "a-r1,r1-b"
        assert (await state(lab, sid))["path"] == [a, r2, b]
        rec = lab.ctl.store.session(sid)
        assert rec is not None and rec.failed_spans == ("a-r1", "r1-b")
        await runs_generation(lab, sid, 1, "A", "R2", "B")
        await holds_nothing(diamond, "R1")


async def test_lost_repeater_moves_the_session_and_a_lost_end_fails_it(diamond: Net, tmp_path: Path) -> None:
    a, r1, r2, b = ids(diamond, "A", "R1", "R2", "B")
    async with running_lab(diamond, tmp_path / "ctl.sqlite") as lab:
        sid = await entanglement_session(lab)
        await diamond.agents["R1"].agent.stop()
        await wait_until(lambda: bool(lab.ctl.reroutes), timeout_s=20)
        ev = lab.ctl.reroutes[0]
        assert ev.ok, ev.detail
        assert ev.span_id == f"node:{r1}"
        assert (await state(lab, sid))["path"] == [a, r2, b]
        await runs_generation(lab, sid, 1, "A", "R2", "B")
        assert {m.node_id: m.memories for m in lab.ctl.memory_reservations()} == {a: 1, r2: 2, b: 1}
        # the end B is lost: the session cannot be moved
        await diamond.agents["B"].agent.stop()
        await wait_until(lambda: lab.ctl.store.session(sid).status == "failed", timeout_s=20)  # type: ignore[union-attr]
        link = await state(lab, sid)
        assert link["last_error"] == "end node B is unreachable"
        assert link["last_error_info"]["node"] == b


# --------------------------------------------------------------------------------- mixed key


@pytest.fixture
async def mixed(start_agent: AgentFactory, tmp_path: Path) -> Net:
    net = await started(
        start_agent,
        tmp_path,
        ["A", "T", "U", "R", "B"],
        [
            ("a-t", "A", "T", 30.0),
            ("a-u", "A", "U", 35.0),
            ("t-r", "T", "R", 40.0),
            ("u-r", "U", "R", 40.0),
            ("r-b", "R", "B", 40.0),
        ],
        {
            "T": ("relay", True, MEMORY),
            "U": ("relay", True, MEMORY),
            "R": ("repeater", False, REPEATER),
            "B": ("endpoint", True, MEMORY),
        },
    )
    return net


async def test_fibre_cut_on_the_qkd_hop_moves_a_mixed_session_and_its_key_visibility(
    mixed: Net, tmp_path: Path
) -> None:
    a, t, u, r, b = ids(mixed, "A", "T", "U", "R", "B")
    async with running_lab(mixed, tmp_path / "ctl.sqlite") as lab:
        sid = await create(lab, key(mixed, str(uuid.uuid4()), repeaters=True))
        link = await state(lab, sid)
        assert link["path"] == [a, t, r, b] and link["plan"]["key_visible_to"] == [a, t, b]
        # R's two memories are this session's: a move must reuse them
        assert {m.node_id: m.memories for m in lab.ctl.memory_reservations()}[r] == 2
        # the A-T fibre is cut: A's PHYS link reports it down
        cut = (
            f'<qkd_node xmlns="{NODE_NS}"><qkd_links><qkd_link><qkdl_id>{phys_link_id("a-t")}</qkdl_id>'
            f'<qsdn_faults xmlns="{EMU}"><fibre_cut>true</fibre_cut></qsdn_faults></qkd_link></qkd_links></qkd_node>'
        )
        async with mixed.agents["A"].client() as c:
            await c.edit_config(cut)
        await wait_until(lambda: bool(lab.ctl.reroutes), timeout_s=20)
        ev = lab.ctl.reroutes[0]
        assert ev.ok, ev.detail
        assert ev.span_id == "a-t"
        link = await state(lab, sid)
        assert link["status"] == "active" and link["path"] == [a, u, r, b]
        assert link["plan"]["key_visible_to"] == [a, u, b] and link["relays"] == [u]
        assert link["virt_qkdl_id"] == derived_id("virt", sid, "1")
        await runs_generation(lab, sid, 1, "A", "U", "R", "B")
        # T kept its PHYS link to A (the span's) but nothing of the session
        have = await node_config(mixed, "T")
        assert texts(have, "//n:qkd_app | //e:session | //e:elementary_link") == []
        assert texts(have, "//n:qkd_link/n:qkdl_id/text()") == [phys_link_id("a-t")]
        # B's key link (segment 1) and end-to-end VIRT link are the new generation's; R is never key-bearing
        have = await node_config(mixed, "B")
        assert sorted(texts(have, "//n:qkd_link/n:qkdl_id/text()")) == sorted(
            [key_link_id(sid, 1, 1), link["virt_qkdl_id"]]
        )
        assert texts(have, "//e:session/e:key_qkdl_id/text()") == [key_link_id(sid, 1, 1)]
        assert texts(await node_config(mixed, "R"), "//n:qkd_link | //n:qkd_app | //e:key_qkdl_id") == []
        assert {m.node_id: m.memories for m in lab.ctl.memory_reservations()} == {u: 1, r: 2, b: 1}
        # the fibre is repaired: once the link produces key again the span is usable again
        async with mixed.agents["A"].client() as c:
            await c.edit_config(cut.replace("<fibre_cut>true</fibre_cut>", "<fibre_cut>false</fibre_cut>"))
        await wait_until(lambda: "a-t" not in lab.ctl.down_spans, timeout_s=15)


async def test_lost_repeater_of_a_mixed_session_without_an_alternative_fails_it(
    mixed: Net, tmp_path: Path
) -> None:
    r = mixed.ids["R"]
    async with running_lab(mixed, tmp_path / "ctl.sqlite") as lab:
        sid = await create(lab, key(mixed, str(uuid.uuid4()), repeaters=True))
        await mixed.agents["R"].agent.stop()
        await wait_until(lambda: bool(lab.ctl.reroutes), timeout_s=20)
        ev = lab.ctl.reroutes[0]
        assert not ev.ok and ev.span_id == f"node:{r}"
        link = await state(lab, sid)
        assert link["status"] == "failed"
        assert link["last_error"].startswith(
            "re-route after the loss of node R failed: no key path from A to B"
        )
        assert link["last_error_info"]["node"] == r
        # deleting it cleans every reachable node (the PHYS link of span a-t stays: it is the span's)
        assert await lab.delete(f"/data/{NET}/qkd_svc_link={sid}") == 204
        for name in ("A", "T", "B"):
            have = await node_config(mixed, name)
            assert texts(have, "//n:qkd_app | //e:session | //e:elementary_link") == [], name
            assert set(texts(have, "//n:qkd_link/n:qkdl_id/text()")) <= {phys_link_id("a-t")}, name
