"""Entanglement and mixed key sessions provisioned on real agents over NETCONF, created through RESTCONF.

Network: endpoints A and B (with quantum memories) joined through the repeater R (2 memories, so one
session at a time); 40 km spans A-R and R-B, elementary links with the BSM station co-located. The agents
run no entanglement driver yet, so these tests check configuration, not delivery.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from lxml import etree

from controller.api import ControllerBackend
from controller.entanglement_provision import ENT_NS, key_link_id, segment_session_id
from controller.northbound.restconf import build_app
from controller.provision import derived_id
from controller.service import Controller, ControllerSettings, contains
from controller.southbound.asyncssh_client import AsyncsshNodeClient
from controller.store import SessionRecord, Store
from controller.transaction import TransactionError
from tests.functional.agents import NODE_NS, AgentFactory, wait_until
from tests.functional.labnet import Net

JSON = "application/yang-data+json"
NET = "qsdn-orchestrator:qkd_network"
AUTH = {"Authorization": "Basic " + base64.b64encode(b"op:pw").decode()}
NS = {"n": NODE_NS, "e": ENT_NS}


MEMORY = {"memories": 4, "coherence_time_s": 10.0}
REPEATER = {"memories": 2, "coherence_time_s": 10.0}
Roles = dict[str, tuple[str, bool, dict[str, Any] | None]]


def seed(net: Net, db: Path, roles: Roles) -> None:
    """The controller's store: ``roles[name] = (role, trusted, entanglement parameters)``."""
    store = Store(db)
    for rec in net.node_records():
        role, trusted, ent = roles.get(rec.name, ("endpoint", True, None))
        rec.role, rec.trusted, rec.entanglement = role, trusted, ent
        store.put_node(rec)
    for srec in net.span_records():
        store.put_span(srec)
    store.close()


async def started(
    start_agent: AgentFactory,
    tmp: Path,
    names: list[str],
    spans: list[tuple[str, str, str, float]],
    roles: Roles,
) -> Net:
    """Agents ``names`` joined by ``spans``, started, and the store ``tmp/ctl.sqlite`` seeded with ``roles``."""
    net = Net(tmp, names, spans)
    await net.start(start_agent)
    seed(net, tmp / "ctl.sqlite", roles)
    return net


@dataclass
class Lab:
    net: Net
    ctl: Controller
    base: str

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession(headers={"Accept": JSON, "Content-Type": JSON, **AUTH}) as http:
            r = await http.post(f"{self.base}{path}", json=body)
            text = await r.text()
            return r.status, (await r.json()) if text.strip() else None

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession(headers={"Accept": JSON, **AUTH}) as http:
            r = await http.get(f"{self.base}{path}")
            assert r.status == 200, await r.text()
            return await r.json()

    async def delete(self, path: str) -> int:
        async with aiohttp.ClientSession(headers={"Accept": JSON, **AUTH}) as http:
            r = await http.delete(f"{self.base}{path}")
            return r.status


@contextlib.asynccontextmanager
async def running_lab(net: Net, db: Path) -> AsyncIterator[Lab]:
    store = Store(db)
    ctl = Controller(store, AsyncsshNodeClient, ControllerSettings(confirm_timeout_s=20, step_timeout_s=5))
    await ctl.start()
    server = TestServer(build_app(ControllerBackend(ctl), users={"op": "pw"}))
    await server.start_server()
    try:
        yield Lab(net, ctl, str(server.make_url("/restconf")))
    finally:
        await server.close()
        await ctl.stop()
        store.close()


@pytest.fixture
async def net(start_agent: AgentFactory, tmp_path: Path) -> Net:
    return await started(
        start_agent,
        tmp_path,
        ["A", "R", "B"],
        [("a-r", "A", "R", 40.0), ("r-b", "R", "B", 40.0)],
        {
            "A": ("endpoint", True, MEMORY),
            "R": ("repeater", False, REPEATER),
            "B": ("endpoint", True, MEMORY),
        },
    )


def key(net: Net, sid: str, **extra: Any) -> dict[str, Any]:
    return {
        "session_id": sid,
        "src_node": net.ids["A"],
        "dst_node": net.ids["B"],
        "src_sae": "sae-a",
        "dst_sae": "sae-b",
        "requested_rate_bps": "1",
        "service": "key",
        **extra,
    }


def entanglement_session(net: Net, sid: str, fidelity: str = "0.9") -> dict[str, Any]:
    return {
        "session_id": sid,
        "src_node": net.ids["A"],
        "dst_node": net.ids["B"],
        "src_sae": "app-a",
        "dst_sae": "app-b",
        "requested_rate_bps": "1",
        "service": "entanglement",
        "target_fidelity": fidelity,
    }


async def node_config(net: Net, name: str) -> etree._Element:
    async with net.agents[name].client() as c:
        return await c.get_config()


def texts(el: etree._Element, path: str) -> list[str]:
    found = el.xpath(path, namespaces=NS)
    return [str(t) for t in found] if isinstance(found, list) else []


async def holds_nothing(net: Net, *names: str) -> None:
    """No node holds any session part: no 015 link or application, no elementary link or session."""
    for name in names:
        have = await node_config(net, name)
        assert texts(have, "//n:qkd_link/n:qkdl_id/text()") == [], name
        assert texts(have, "//n:qkd_app/n:app_id/text()") == [], name
        assert texts(have, "//e:elementary_link/e:link_id/text()") == [], name
        assert texts(have, "//e:session/e:session_id/text()") == [], name


async def test_key_session_over_a_repeater_chain_through_restconf(net: Net, tmp_path: Path) -> None:
    a, r, b = net.ids["A"], net.ids["R"], net.ids["B"]
    async with running_lab(net, tmp_path / "ctl.sqlite") as lab:
        sid = str(uuid.uuid4())
        status, body = await lab.post(
            f"/data/{NET}",
            {"qsdn-orchestrator:qkd_svc_link": [key(net, sid, repeaters=True, max_trusted_nodes=0)]},
        )
        assert status == 201, body
        kl, es = key_link_id(sid, 0, 0), segment_session_id(sid, 0, 0)
        client = derived_id("client", sid, "0")
        # every node holds exactly its part
        for name, role in (("A", "end"), ("B", "end")):
            have = await node_config(net, name)
            assert texts(have, "//n:qkd_link/n:qkdl_id/text()") == [kl], name
            assert texts(have, "//n:qkd_link/n:qkdl_type/text()") == ["etsi-qkdn-types:VIRT"], name
            assert texts(have, "//n:virt_next_hop | //n:virt_prev_hop") == [], name
            assert texts(have, "//n:qkd_app/n:app_id/text()") == [client], name
            assert texts(have, "//n:qkd_app/n:backing_qkdl_id/text()") == [kl], name
            assert texts(have, "//e:session/e:session_id/text()") == [es], name
            assert texts(have, "//e:session/e:role/text()") == [role], name
            assert texts(have, "//e:session/e:key_qkdl_id/text()") == [kl], name
            assert texts(have, "//e:session/e:path/text()") == [a, r, b], name
            assert len(texts(have, "//e:elementary_link/e:link_id/text()")) == 1, name
            assert texts(have, "//e:memories/e:count/text()") == ["4"], name
        rep = await node_config(net, "R")
        assert texts(rep, "//n:qkd_link | //n:qkd_app | //e:key_qkdl_id") == []  # never key-bearing
        assert texts(rep, "//e:session/e:role/text()") == ["repeater"]
        assert texts(rep, "//e:session/e:prev_hop/text()") == [a]
        assert texts(rep, "//e:session/e:next_hop/text()") == [b]
        assert sorted(texts(rep, "//e:elementary_link/e:remote_qkdn_id/text()")) == sorted([a, b])
        assert texts(rep, "//e:memories/e:count/text()") == ["2"]
        # the elementary links join the right ends with the same ids
        a_links = texts(await node_config(net, "A"), "//e:elementary_link/e:link_id/text()")
        b_links = texts(await node_config(net, "B"), "//e:elementary_link/e:link_id/text()")
        assert sorted(texts(rep, "//e:elementary_link/e:link_id/text()")) == sorted(a_links + b_links)
        # each session names its links at both ends of every hop, and the memories the controller
        # reserved for it at each node (1 + rounds at an end, 1 per side at the repeater)
        assert texts(rep, "//e:session/e:prev_link_id/text()") == a_links
        assert texts(rep, "//e:session/e:next_link_id/text()") == b_links
        assert texts(await node_config(net, "A"), "//e:session/e:next_link_id/text()") == a_links
        assert texts(await node_config(net, "B"), "//e:session/e:prev_link_id/text()") == b_links
        held = {m.node_id: m.memories for m in lab.ctl.memory_reservations()}
        assert texts(rep, "//e:session/e:prev_memories/text()") == ["1"]
        assert texts(rep, "//e:session/e:next_memories/text()") == ["1"]
        assert held[r] == 2
        for name, side in (("A", "next"), ("B", "prev")):
            have = await node_config(net, name)
            assert texts(have, f"//e:session/e:{side}_memories/text()") == [str(held[net.ids[name]])]
        # the state reports the plan and who could see the key
        link = next(x for x in (await lab.get(f"/data/{NET}"))[NET]["qkd_svc_link"] if x["session_id"] == sid)
        assert link["status"] == "active" and link["service"] == "key" and link["repeaters"] is True
        plan = link["plan"]
        assert plan["node"] == [a, r, b] and plan["key_visible_to"] == [a, b]
        (seg,) = plan["segment"]
        assert seg["technology"] == "entanglement" and seg["repeaters"] == [r]
        assert seg["swap_order"] == "asap" and float(seg["fidelity"]) > 0.835
        assert float(plan["key_rate_bps"]) > 0
        assert "relays" not in link and "virt_qkdl_id" not in link
        # delete through RESTCONF: every node is clean again (the nodes keep their memories)
        assert await lab.delete(f"/data/{NET}/qkd_svc_link={sid}") == 204
        await holds_nothing(net, "A", "R", "B")
        assert texts(await node_config(net, "R"), "//e:memories/e:count/text()") == ["2"]
        assert lab.ctl.store.session(sid) is None and lab.ctl.memory_reservations() == []


async def test_memory_over_commit_is_refused_with_the_reason(net: Net, tmp_path: Path) -> None:
    async with running_lab(net, tmp_path / "ctl.sqlite") as lab:
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        op = "/operations/qsdn-orchestrator:create-session"
        status, body = await lab.post(op, {"qsdn-orchestrator:input": entanglement_session(net, first)})
        assert status == 200, body
        assert body["qsdn-orchestrator:output"]["status"] == "active"
        assert {m.node_id: m.memories for m in lab.ctl.memory_reservations()}[net.ids["R"]] == 2
        before = {n: etree.tostring(await node_config(net, n)) for n in ("A", "R", "B")}
        status, body = await lab.post(op, {"qsdn-orchestrator:input": entanglement_session(net, second)})
        assert status == 409, body
        err = body["ietf-restconf:errors"]["error"][0]
        assert err["error-tag"] == "resource-denied"
        assert "not enough quantum memories" in err["error-message"] and "R" in err["error-message"]
        # no node changed, the refused session holds nothing
        for n in ("A", "R", "B"):
            assert etree.tostring(await node_config(net, n)) == before[n], n
        assert all(m.session_id == first for m in lab.ctl.memory_reservations())
        # the first session is pairs only: no node holds anything key-bearing
        for n in ("A", "R", "B"):
            have = await node_config(net, n)
            assert texts(have, "//n:qkd_link | //n:qkd_app | //e:key_qkdl_id") == [], n
            assert texts(have, "//e:session/e:application/text()") == ["pairs"], n
        # each end lists the application the request named there; the repeater none
        assert texts(await node_config(net, "A"), "//e:session/e:clients/text()") == ["app-a"]
        assert texts(await node_config(net, "B"), "//e:session/e:clients/text()") == ["app-b"]
        assert texts(await node_config(net, "R"), "//e:session/e:clients/text()") == []
        # deleting the first frees R's memories: the second now fits
        status, _ = await lab.post(
            "/operations/qsdn-orchestrator:delete-session", {"qsdn-orchestrator:input": {"session_id": first}}
        )
        assert status in (200, 204)
        status, body = await lab.post(op, {"qsdn-orchestrator:input": entanglement_session(net, second)})
        assert status == 200, body
        have = await node_config(net, "R")
        assert texts(have, "//e:session/e:session_id/text()") == [segment_session_id(second, 0, 0)]


async def test_agent_killed_mid_provisioning_leaves_no_node_with_any_part(
    net: Net, start_agent: AgentFactory, tmp_path: Path
) -> None:
    async with running_lab(net, tmp_path / "ctl.sqlite") as lab:
        repeater = net.agents["R"].agent
        s = SessionRecord(
            session_id=str(uuid.uuid4()),
            src_node=net.ids["A"],
            dst_node=net.ids["B"],
            src_sae="sae-a",
            dst_sae="sae-b",
            rate_bps=1,
            service="key",
            repeaters=True,
        )
        create = asyncio.ensure_future(lab.ctl.create_session(s))
        # the repeater dies while the controller holds its locks (the transaction is under way)
        await wait_until(lambda: "candidate" in repeater.datastores.locks, timeout_s=10, step_s=0.001)
        await repeater.stop()
        with pytest.raises(TransactionError) as ei:
            await create
        assert ei.value.node == net.ids["R"]
        failed = lab.ctl.store.session(s.session_id)
        assert failed is not None and failed.status == "failed" and failed.last_error_node == net.ids["R"]
        assert lab.ctl.memory_reservations() == []  # a failed session holds no memories
        await holds_nothing(net, "A", "B")
    # the repeater restarts without any part of the session
    await net.start(start_agent, only=["R"])
    await holds_nothing(net, "R")


async def test_restart_keeps_sessions_and_repairs_a_tampered_repeater(net: Net, tmp_path: Path) -> None:
    db = tmp_path / "ctl.sqlite"
    sid = str(uuid.uuid4())
    async with running_lab(net, db) as lab:
        status, body = await lab.post(
            "/operations/qsdn-orchestrator:create-session",
            {"qsdn-orchestrator:input": entanglement_session(net, sid)},
        )
        assert status == 200, body
        rec = lab.ctl.store.session(sid)
        assert rec is not None
        edits = lab.ctl.session_plan(rec, full=True).edits
    es = segment_session_id(sid, 0, 0)
    # behind the controller's back: the repeater loses its part of the session
    async with net.agents["R"].client() as c:
        await c.edit_config(
            f'<qkd_node xmlns="{NODE_NS}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
            f'<entanglement xmlns="{ENT_NS}"><sessions><session nc:operation="delete">'
            f"<session_id>{es}</session_id></session></sessions></entanglement></qkd_node>"
        )
    assert not contains(await node_config(net, "R"), etree.fromstring(edits[net.ids["R"]]))
    async with running_lab(net, db) as lab2:
        again = lab2.ctl.store.session(sid)
        assert again is not None and again.status == "active" and again.plan == rec.plan
        for name in ("A", "R", "B"):
            assert contains(await node_config(net, name), etree.fromstring(edits[net.ids[name]])), name
        # the reservation survived the restart: a second session still does not fit
        assert {m.node_id: m.memories for m in lab2.ctl.memory_reservations()}[net.ids["R"]] == 2
        status, body = await lab2.post(
            "/operations/qsdn-orchestrator:create-session",
            {"qsdn-orchestrator:input": entanglement_session(net, str(uuid.uuid4()))},
        )
        assert status == 409 and "memories" in body["ietf-restconf:errors"]["error"][0]["error-message"]


async def test_qsdn_session_create_service_entanglement(net: Net, tmp_path: Path) -> None:
    from tests.functional.test_controller_entanglement import qsdn

    async with running_lab(net, tmp_path / "ctl.sqlite") as lab:
        conn = ["--url", lab.base.removesuffix("/restconf"), "--user", "op", "--password", "pw"]
        rc, out, err = await qsdn(
            "session", "create", "--src", "A", "--dst", "B", "--service", "entanglement",
            "--fidelity", "0.9", *conn, "--format", "json",
        )  # fmt: skip
        assert rc == 0, err
        o = json.loads(out)["qsdn-orchestrator:output"]
        assert o["status"] == "active" and o["path"] == [net.ids[n] for n in "ARB"]
        rec = lab.ctl.store.session(o["session_id"])
        assert rec is not None and rec.service == "entanglement" and rec.target_fidelity == 0.9
        have = await node_config(net, "R")
        assert texts(have, "//e:session/e:target_fidelity/text()") != []
        assert float(texts(have, "//e:session/e:target_fidelity/text()")[0]) == 0.9
        # a key session without --rate is refused by the CLI itself
        rc, out, err = await qsdn("session", "create", "--src", "A", "--dst", "B", *conn)
        assert rc != 0 and "--rate" in err
