"""Admission of entanglement and mixed key sessions end to end: RESTCONF, the controller, real agents.

Issue 6 acceptance: "a request whose fidelity target cannot be met is rejected with the reason; one that
needs purification gets it". Every check reads the nodes' running configuration over NETCONF.

Networks (40 km spans, elementary links with the BSM station co-located, default memory parameters but
10 s coherence; see tests/functional/test_controller_entanglement_sessions.py for the A - R - B chain):

* chain: endpoints A and B (4 memories) joined through the repeater R (2 memories);
* relay: endpoints A and B joined only through the trusted relay T by QKD spans (no memories anywhere);
* mixed: A - T by QKD, then T - R - B through the repeater R (T and B have memories).

Predictions on the chain (``controller.entanglement``): F = 0.9597 unpurified; one DEJMPS round gives
0.9715, two 0.9973, three 0.9978 (the best the default of 3 rounds allows).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from controller.entanglement_provision import ENT_NS, segment_session_id
from tests.functional.agents import NODE_NS, AgentFactory
from tests.functional.labnet import Net
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
CREATE = "/operations/qsdn-orchestrator:create-session"


@pytest.fixture
async def chain(start_agent: AgentFactory, tmp_path: Path) -> Net:
    net = await started(
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
    return net


def entanglement(net: Net, sid: str, fidelity: str, **extra: Any) -> dict[str, Any]:
    return {
        "session_id": sid,
        "src_node": net.ids["A"],
        "dst_node": net.ids["B"],
        "requested_rate_bps": "1",
        "service": "entanglement",
        "target_fidelity": fidelity,
        **extra,
    }


async def refused(lab: Lab, path: str, body: Any) -> dict[str, Any]:
    status, reply = await lab.post(path, body)
    assert status == 409, reply
    err: dict[str, Any] = reply["ietf-restconf:errors"]["error"][0]
    assert err["error-tag"] == "resource-denied"
    return err


async def nothing_anywhere(lab: Lab, *names: str) -> None:
    """No node holds any part of a session, nor memories the controller wrote, nor the store a session."""
    await holds_nothing(lab.net, *names)
    for name in names:
        assert texts(await node_config(lab.net, name), "//e:memories") == [], name
    assert lab.ctl.store.sessions() == [] and lab.ctl.memory_reservations() == []
    state = (await lab.get(f"/data/{NET}"))[NET]
    assert "qkd_svc_link" not in state


# --------------------------------------------------------------------------------- fidelity targets


async def test_unreachable_fidelity_is_refused_naming_the_best_and_the_limit(
    chain: Net, tmp_path: Path
) -> None:
    async with running_lab(chain, tmp_path / "ctl.sqlite") as lab:
        # create-session: above what three rounds of purification can reach
        err = await refused(
            lab, CREATE, {"qsdn-orchestrator:input": entanglement(chain, str(uuid.uuid4()), "0.999")}
        )
        msg = err["error-message"]
        assert "fidelity 0.999" in msg and "at most 3 purification round(s)" in msg, msg
        assert "the best achievable is F = 0.9978" in msg, msg
        assert "limited by link A-R (span a-r" in msg, msg
        # the session list: purification not allowed, so even 0.97 is out of reach
        sid = str(uuid.uuid4())
        err = await refused(
            lab,
            f"/data/{NET}",
            {
                "qsdn-orchestrator:qkd_svc_link": [
                    entanglement(chain, sid, "0.97", max_purification_rounds=0),
                ]
            },
        )
        msg = err["error-message"]
        assert "fidelity 0.97 with at most 0 purification round(s)" in msg, msg
        assert "the best achievable is F = 0.9597" in msg and "link A-R" in msg, msg
        await nothing_anywhere(lab, "A", "R", "B")


async def test_short_lived_memory_is_named_as_the_limit(start_agent: AgentFactory, tmp_path: Path) -> None:
    short_lived = {"memories": 2, "coherence_time_s": 0.001}
    net = await started(
        start_agent,
        tmp_path,
        ["A", "R", "B"],
        [("a-r", "A", "R", 40.0), ("r-b", "R", "B", 40.0)],
        {
            "A": ("endpoint", True, MEMORY),
            "R": ("repeater", False, short_lived),
            "B": ("endpoint", True, MEMORY),
        },
    )
    async with running_lab(net, tmp_path / "ctl.sqlite") as lab:
        err = await refused(
            lab, CREATE, {"qsdn-orchestrator:input": entanglement(net, str(uuid.uuid4()), "0.9")}
        )
        msg = err["error-message"]
        assert "the best achievable is F = " in msg, msg
        assert "storage in the memory of R" in msg, msg
        await nothing_anywhere(lab, "A", "R", "B")


@pytest.mark.parametrize(("target", "rounds"), [("0.97", 1), ("0.99", 2)])
async def test_a_target_that_needs_purification_gets_it_on_every_node(
    chain: Net, tmp_path: Path, target: str, rounds: int
) -> None:
    a, r, b = (chain.ids[n] for n in "ARB")
    async with running_lab(chain, tmp_path / "ctl.sqlite") as lab:
        sid = str(uuid.uuid4())
        status, body = await lab.post(CREATE, {"qsdn-orchestrator:input": entanglement(chain, sid, target)})
        assert status == 200, body
        link = (await lab.get(f"/data/{NET}/qkd_svc_link={sid}"))["qsdn-orchestrator:qkd_svc_link"][0]
        assert link["status"] == "active"
        (seg,) = link["plan"]["segment"]
        assert seg["purification_rounds"] == rounds and seg["purification_protocol"] == "dejmps"
        assert float(seg["fidelity"]) >= float(target) > float(seg["unpurified_fidelity"])
        # every node of the chain runs the purification (the ends purify, the repeater knows the plan)
        es = segment_session_id(sid, 0, 0)
        for name in ("A", "R", "B"):
            have = await node_config(chain, name)
            assert texts(have, "//e:session/e:session_id/text()") == [es], name
            assert texts(have, "//e:session/e:purification/e:protocol/text()") == ["dejmps"], name
            assert texts(have, "//e:session/e:purification/e:rounds/text()") == [str(rounds)], name
            assert float(texts(have, "//e:session/e:target_fidelity/text()")[0]) == float(target), name
        # each round holds one more memory at each end; the repeater holds two
        held = {m.node_id: m.memories for m in lab.ctl.memory_reservations()}
        assert held == {a: 1 + rounds, r: 2, b: 1 + rounds}
        assert await lab.delete(f"/data/{NET}/qkd_svc_link={sid}") == 204
        await holds_nothing(chain, "A", "R", "B")


async def test_purification_that_needs_more_memories_than_the_ends_have_is_refused(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    small = {"memories": 2, "coherence_time_s": 10.0}
    net = await started(
        start_agent,
        tmp_path,
        ["A", "R", "B"],
        [("a-r", "A", "R", 40.0), ("r-b", "R", "B", 40.0)],
        {"A": ("endpoint", True, small), "R": ("repeater", False, small), "B": ("endpoint", True, small)},
    )
    async with running_lab(net, tmp_path / "ctl.sqlite") as lab:
        # 0.99 needs two rounds, so three memories at each end
        err = await refused(
            lab, CREATE, {"qsdn-orchestrator:input": entanglement(net, str(uuid.uuid4()), "0.99")}
        )
        msg = err["error-message"]
        assert "not enough quantum memories" in msg and "2 purification round(s)" in msg, msg
        assert "needs 3 at A, which has 2 of 2 free" in msg, msg
        await nothing_anywhere(lab, "A", "R", "B")


# --------------------------------------------------------------------------------- key requests


async def test_key_without_trusted_nodes_over_a_relay_only_network_is_refused(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    net = await started(
        start_agent,
        tmp_path,
        ["A", "T", "B"],
        [("a-t", "A", "T", 40.0), ("t-b", "T", "B", 40.0)],
        {"T": ("relay", True, None)},
    )
    async with running_lab(net, tmp_path / "ctl.sqlite") as lab:
        # a mixed key request: the planner finds the relay path only
        err = await refused(
            lab,
            CREATE,
            {"qsdn-orchestrator:input": key(net, str(uuid.uuid4()), repeaters=True, max_trusted_nodes=0)},
        )
        msg = err["error-message"]
        assert "no key path from A to B with at most 0 trusted relay(s)" in msg, msg
        assert "the fewest possible is 1" in msg and "A has no quantum memories" in msg, msg
        # a trusted-relay key request with the same bound: refused too, never routed through T
        sid = str(uuid.uuid4())
        err = await refused(
            lab, f"/data/{NET}", {"qsdn-orchestrator:qkd_svc_link": [key(net, sid, max_trusted_nodes=0)]}
        )
        msg = err["error-message"]
        assert "at most 0 trusted relay(s)" in msg and "the fewest possible is 1" in msg, msg
        await nothing_anywhere(lab, "A", "T", "B")
        for name in ("A", "T", "B"):
            assert texts(await node_config(net, name), "//n:qkd_link") == [], name
        # with one relay allowed, the same request goes through T
        status, body = await lab.post(CREATE, {"qsdn-orchestrator:input": key(net, sid, max_trusted_nodes=1)})
        assert status == 200, body
        assert body["qsdn-orchestrator:output"]["path"] == [net.ids[n] for n in "ATB"]


async def test_mixed_path_reports_who_could_see_the_key(start_agent: AgentFactory, tmp_path: Path) -> None:
    net = await started(
        start_agent,
        tmp_path,
        ["A", "T", "R", "B"],
        [("a-t", "A", "T", 40.0), ("t-r", "T", "R", 40.0), ("r-b", "R", "B", 40.0)],
        {"T": ("relay", True, MEMORY), "R": ("repeater", False, REPEATER), "B": ("endpoint", True, MEMORY)},
    )
    a, t, r, b = (net.ids[n] for n in "ATRB")
    async with running_lab(net, tmp_path / "ctl.sqlite") as lab:
        sid = str(uuid.uuid4())
        status, body = await lab.post(
            f"/data/{NET}", {"qsdn-orchestrator:qkd_svc_link": [key(net, sid, repeaters=True)]}
        )
        assert status == 201, body
        link = (await lab.get(f"/data/{NET}/qkd_svc_link={sid}"))["qsdn-orchestrator:qkd_svc_link"][0]
        assert link["status"] == "active" and link["path"] == [a, t, r, b]
        plan = link["plan"]
        assert plan["key_visible_to"] == [a, t, b]  # never the repeater
        assert plan["trusted_relays"] == [t] and link["relays"] == [t]
        qkd, ent = plan["segment"]
        assert qkd["technology"] == "qkd" and ent["technology"] == "entanglement" and ent["repeaters"] == [r]
        # the nodes agree: key-bearing configuration only on A, T and B; the VIRT link of the state is there
        virt = link["virt_qkdl_id"]
        for name in ("A", "T", "B"):
            have = await node_config(net, name)
            assert virt in texts(have, "//n:qkd_link/n:qkdl_id/text()"), name
            assert texts(have, "//n:qkd_app/n:app_id/text()") != [], name
        rep = await node_config(net, "R")
        assert texts(rep, "//n:qkd_link | //n:qkd_app | //e:key_qkdl_id") == []
        assert texts(rep, "//e:session/e:role/text()") == ["repeater"]
        # T measures the pairs of the repeater segment: it is an end of that segment, with its key link
        assert texts(await node_config(net, "T"), "//e:session/e:role/text()") == ["end"]
        assert texts(await node_config(net, "A"), "//e:session") == []
