"""Memories, elementary links and pair ids of entanglement sessions, with a medium and three real agents.

Two ``pairs`` sessions run over the same A - R - B segment, each on its own elementary links (named by
``prev_link_id``/``next_link_id`` at both ends of every hop, as the controller writes them) and with the
memories the model gives them when the session says nothing (1 per side at the repeater, 1 at an end):
the nodes have exactly the memories the two sessions use (2 at an end, 4 at the repeater), so a driver
that took more than its share would refuse the second session. A third session is refused by the node
model with an ``<rpc-error>`` naming the rule. A session deleted and created again with the same id
delivers pairs under a new run nonce, so no pair id repeats. A ``PairQueue`` reader that times out
leaves no waiter behind.

No assertion is about wall-clock time: everything polls with a timeout.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from agent.drivers.entanglement_driver import EmulatedEntanglementDriver, PairQueue
from agent.drivers.medium_service import MediumServer
from agent.server import NetconfAgent
from qsdn.errors import DriverError
from qsdn.netconf.client import NetconfClient, NetconfRpcError
from qsdn.yang import SchemaContext
from tests.functional.agents import NODE_NS, node_config, wait_until
from tests.functional.entangled import (
    BSM_STATION,
    ENT_NS,
    Hop,
    delete_session_xml,
    elementary_link_xml,
    netconf_client,
    running_agents,
    running_medium,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

NODE_A = "0e000000-0000-4000-8000-00000000001a"
NODE_B = "0e000000-0000-4000-8000-00000000001b"
NODE_R = "0e000000-0000-4000-8000-00000000001c"
STATION_1 = "0e000000-0000-4000-8000-0000000001d1"
STATION_2 = "0e000000-0000-4000-8000-0000000001d2"
#: session -> (link A - R, link R - B): each session its own elementary links over the same fibres
SESSIONS = {
    "3e000000-0000-4000-8000-000000000011": (
        "1e000000-0000-4000-8000-000000000011",
        "1e000000-0000-4000-8000-000000000012",
    ),
    "3e000000-0000-4000-8000-000000000012": (
        "1e000000-0000-4000-8000-000000000021",
        "1e000000-0000-4000-8000-000000000022",
    ),
    "3e000000-0000-4000-8000-000000000013": (
        "1e000000-0000-4000-8000-000000000031",
        "1e000000-0000-4000-8000-000000000032",
    ),
}
FIRST, SECOND, THIRD = SESSIONS
#: memories: exactly what two sessions use with the model's defaults
COUNT = {NODE_A: 2, NODE_R: 4, NODE_B: 2}
HOP = Hop(length_km=50.0, loss_db=20.0, modes=10, f0=0.98)


def _session(node: str, sid: str) -> tuple[str, str]:
    """(elementary links, session) of ``sid`` at ``node``."""
    ar, rb = SESSIONS[sid]
    links, hops = [], ""
    if node in (NODE_A, NODE_R):
        links.append(elementary_link_xml(ar, NODE_R if node == NODE_A else NODE_A, STATION_1, HOP))
    if node in (NODE_B, NODE_R):
        links.append(elementary_link_xml(rb, NODE_R if node == NODE_B else NODE_B, STATION_2, HOP))
    if node == NODE_A:
        hops = f"<next_hop>{NODE_R}</next_hop><next_link_id>{ar}</next_link_id>"
    elif node == NODE_B:
        hops = f"<prev_hop>{NODE_R}</prev_hop><prev_link_id>{rb}</prev_link_id>"
    else:
        hops = (
            f"<prev_hop>{NODE_A}</prev_hop><prev_link_id>{ar}</prev_link_id>"
            f"<next_hop>{NODE_B}</next_hop><next_link_id>{rb}</next_link_id>"
        )
    session = f"""
      <session>
        <session_id>{sid}</session_id>
        <role>{"repeater" if node == NODE_R else "end"}</role>
        <end_a_qkdn_id>{NODE_A}</end_a_qkdn_id>
        <end_b_qkdn_id>{NODE_B}</end_b_qkdn_id>
        <path>{NODE_A}</path><path>{NODE_R}</path><path>{NODE_B}</path>
        {hops}
        <application>pairs</application>
      </session>"""
    return "".join(links), session


def node_xml(node: str, *sids: str) -> str:
    parts = [_session(node, sid) for sid in sids]
    bsm = BSM_STATION if node == NODE_R else ""
    return f"""
<qkd_node xmlns="{NODE_NS}">
  <qkdn_id>{node}</qkdn_id>
  <entanglement xmlns="{ENT_NS}">
    <memories><count>{COUNT[node]}</count><coherence_time_s>1000</coherence_time_s></memories>
    {bsm}
    <elementary_links>{"".join(p[0] for p in parts)}</elementary_links>
    <sessions>{"".join(p[1] for p in parts)}</sessions>
  </entanglement>
</qkd_node>"""


NODES = {"alice": NODE_A, "repeater": NODE_R, "bob": NODE_B}


class Chain:
    def __init__(self, medium: MediumServer) -> None:
        self.medium = medium
        self.agents: dict[str, NetconfAgent] = {}

    def client(self, name: str) -> NetconfClient:
        return netconf_client(self.agents[name])

    def driver(self, name: str) -> EmulatedEntanglementDriver:
        driver = self.agents[name].entanglement
        assert isinstance(driver, EmulatedEntanglementDriver)
        return driver

    async def edit(self, name: str, xml: str) -> None:
        async with self.client(name) as c:
            reply = await c.edit_config(xml)
            assert reply.ok

    async def pair_ids(self, sid: str, n: int) -> tuple[str, list[tuple[int, int]]]:
        """(run, ids of ``n`` pairs) taken at A, and released at both ends (each end has one memory for
        the session: a pair nobody takes at B would hold it, and no further pair could come)."""
        queues = [self.driver(name).pairs(sid) for name in ("alice", "bob")]
        ids = []
        for _ in range(n):
            pairs = await asyncio.gather(*(q.get(20.0) for q in queues))
            assert pairs[0].pair_id == pairs[1].pair_id
            ids.append(pairs[0].pair_id)
            for pair in pairs:
                pair.release()
        assert queues[0].run == queues[1].run
        return queues[0].run, ids


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chain(tmp_path_factory: pytest.TempPathFactory, schema: SchemaContext) -> AsyncIterator[Chain]:
    tmp = tmp_path_factory.mktemp("memories")
    async with running_medium(seed=11) as medium:
        ch = Chain(medium)
        cfgs: dict[str, dict[str, Any]] = {}
        for name, node_id in NODES.items():
            cfgs[name] = node_config(tmp, name, node_id=node_id)
            cfgs[name]["entanglement"] = {"medium": {"port": medium.port}, "timeout_s": 2.0}
        async with running_agents(cfgs, schema, ch.agents):
            yield ch


async def test_two_sessions_over_one_segment_both_deliver(chain: Chain) -> None:
    for name, node in NODES.items():
        await chain.edit(name, node_xml(node, FIRST, SECOND))
    for sid in (FIRST, SECOND):
        for end in ("alice", "bob"):
            await wait_until(functools.partial(_delivering, chain, end, sid), timeout_s=30)
    # each session holds exactly its memories: the nodes are full, never over-committed
    for name, node in NODES.items():
        runs = chain.driver(name)._runs
        assert sorted(r.reserved for r in runs.values()) == [COUNT[node] // 2] * 2, name
        assert {r.spec.session_id for r in runs.values()} == {FIRST, SECOND}
    # each session runs on its own links, the ones its configuration names
    rep = chain.driver("repeater")._runs
    for sid in (FIRST, SECOND):
        assert sorted(rep[sid].hop_links.values()) == sorted(SESSIONS[sid])


def _delivering(chain: Chain, name: str, sid: str) -> bool:
    state = chain.driver(name).session_state(sid)
    return state is not None and state.pairs_delivered > 0


async def test_a_session_beyond_the_memories_is_refused_by_the_model(chain: Chain) -> None:
    async with chain.client("repeater") as c:
        with pytest.raises(NetconfRpcError) as exc:
            await c.edit_config(node_xml(NODE_R, FIRST, SECOND, THIRD))
    err = exc.value.errors[0]
    assert err.tag == "operation-failed"
    assert "the sessions of this node use more memories than it has" in (err.message or "")
    assert (err.path or "").endswith("memories/qsdn-entanglement:count")
    # nothing changed: the two sessions still run
    assert set(chain.driver("repeater")._runs) == {FIRST, SECOND}


async def test_a_recreated_session_gives_new_pair_ids(chain: Chain) -> None:
    run_before, before = await chain.pair_ids(FIRST, 3)
    assert len(run_before) == 19 and len(set(before)) == 3
    for name in NODES:
        await chain.edit(name, delete_session_xml(FIRST))
    for name, node in NODES.items():
        await chain.edit(name, node_xml(node, FIRST, SECOND))
    await wait_until(lambda: FIRST in chain.driver("alice")._runs, timeout_s=10)
    run_after, after = await chain.pair_ids(FIRST, 3)
    # the sequence starts again with a new run: labels may repeat, the ids with their run never do
    assert run_after != run_before
    assert run_after == chain.driver("bob").pairs(FIRST).run
    old = {(run_before, p) for p in before}
    assert not old & {(run_after, p) for p in after}


async def test_a_pair_queue_reader_that_times_out_leaves_no_waiter() -> None:
    queue = PairQueue()
    for _ in range(5):
        with pytest.raises(DriverError):
            await queue.get(0.01)
    assert queue.waiters == 0
    task = asyncio.get_running_loop().create_task(queue.get(10.0))
    await asyncio.sleep(0.01)
    assert queue.waiters == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.waiters == 0
