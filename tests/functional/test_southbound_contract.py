"""The southbound contract: both NodeClient implementations against real agents, one suite.

Every test in the first part runs twice, once per implementation (``make_client`` is parametrized
over ``asyncssh`` and ``ncclient``), against agents started in-process on loopback. Two fakes cover
what a healthy agent never does: :func:`fake_silent_node` (SSH and ``<hello>``, then no reply to any
request but ``<close-session>``) and :func:`black_hole` (accepts TCP, never speaks). The last part
holds the ncclient-specific checks (event loop never blocked, TCP_NODELAY, per-session tick) and a
cross-check that both clients return the same data and the same error records.

Waits are bounds, not expectations: timeouts here are short on purpose (0.5-1 s) so that the
failure paths are exercised quickly, and the assertions compare against those bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError, RPCReply
from ncclient.transport import session as ncclient_session
from ncclient.xml_ import to_ele

from agent.server import _SSHServer
from controller.southbound import IMPLEMENTATIONS, NodeClient, node_client
from controller.southbound.base import (
    NodeEndpoint,
    NodeRpcError,
    NodeUnreachableError,
    NotificationFeed,
)
from controller.southbound.ncclient_client import DEFAULT_TICK_S, NcclientNodeClient, rpc_error_infos
from qsdn.errors import ErrorType
from qsdn.netconf import xml as ncxml
from qsdn.netconf.client import NetconfRpcError
from qsdn.netconf.messages import Notification, build_hello, build_ok, parse_rpc_reply
from tests.functional.agents import (
    NODE_NS,
    PASSWORD,
    USER,
    AgentFactory,
    AgentHandle,
    free_port,
    node_config,
    pair_configs,
    phys_link_xml,
    wait_until,
)

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
NCN = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
NS = {"nc": NC, "n": NODE_NS, "ncn": NCN}
EOM = b"]]>]]>"
RPC_TIMEOUT_S = 10.0
REQUIRED_CAPS = (
    "urn:ietf:params:netconf:base:1.1",
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    "urn:ietf:params:netconf:capability:validate:1.1",
    "urn:ietf:params:netconf:capability:notification:1.0",
)

ClientFactory = Callable[..., NodeClient]


def xp(el: etree._Element, path: str) -> Any:
    return el.xpath(path, namespaces=NS)


def pending_confirmation(h: AgentHandle) -> bool:
    return h.agent.datastores.confirmed is not None


def version_edit(value: str) -> str:
    return f'<qkd_node xmlns="{NODE_NS}"><qkdn_version>{value}</qkdn_version></qkd_node>'


BAD_EDIT = f"""<qkd_node xmlns="{NODE_NS}"><qkd_interfaces><qkd_interface>
  <qkdi_id>not-a-number</qkdi_id></qkd_interface></qkd_interfaces></qkd_node>"""


@pytest.fixture(autouse=True)
async def agent_connections(
    start_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[set[asyncssh.SSHServerConnection]]:
    """The agents' SSH connections, closed before the agents stop.

    ``NetconfAgent.stop()`` ends every NETCONF session but leaves the SSH connections open (asyncssh's
    acceptor keeps them); a client that closes without waiting for the server (ncclient does) would
    leave one behind for the garbage collector. Until the agent closes them itself, this does.
    """
    conns: set[asyncssh.SSHServerConnection] = set()
    made = _SSHServer.connection_made

    def connection_made(self: _SSHServer, conn: asyncssh.SSHServerConnection) -> None:
        conns.add(conn)
        made(self, conn)

    def connection_lost(self: _SSHServer, exc: Exception | None) -> None:
        conns.discard(self._conn)

    monkeypatch.setattr(_SSHServer, "connection_made", connection_made)
    monkeypatch.setattr(_SSHServer, "connection_lost", connection_lost)
    yield conns
    for conn in list(conns):
        conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), 5.0)


@pytest.fixture(params=IMPLEMENTATIONS)
async def make_client(
    request: pytest.FixtureRequest,
    start_agent: AgentFactory,
    agent_connections: set[asyncssh.SSHServerConnection],
) -> AsyncIterator[ClientFactory]:
    """Unconnected clients of one implementation; all closed before the agents stop."""
    made: list[NodeClient] = []

    def make(port: int, *, timeout_s: float = RPC_TIMEOUT_S, **kw: Any) -> NodeClient:
        kw.setdefault("password", PASSWORD)
        user = kw.pop("username", USER)
        client = node_client(NodeEndpoint("127.0.0.1", port, user, timeout_s=timeout_s, **kw), request.param)
        made.append(client)
        return client

    yield make
    await asyncio.gather(*(c.close() for c in made))


async def connected(make: ClientFactory, h: AgentHandle, **kw: Any) -> NodeClient:
    client = make(h.port, **kw)
    await client.connect()
    return client


async def next_config_change(it: AsyncIterator[Notification], timeout_s: float = 5.0) -> Notification:
    async def first() -> Notification:
        async for n in it:
            if n.body.tag == f"{{{NCN}}}netconf-config-change":
                return n
        raise AssertionError("notifications ended before a netconf-config-change")

    return await asyncio.wait_for(first(), timeout_s)


# --- fakes -------------------------------------------------------------------------------------------
class _AcceptAnyone(asyncssh.SSHServer):
    def __init__(self, conns: set[asyncssh.SSHServerConnection]) -> None:
        self._conns = conns
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._conns.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return True


@asynccontextmanager
async def fake_silent_node() -> AsyncIterator[int]:
    """A NETCONF server that says hello (base:1.0), answers <close-session>, and nothing else."""
    conns: set[asyncssh.SSHServerConnection] = set()

    async def serve(process: asyncssh.SSHServerProcess[bytes]) -> None:
        process.stdout.write(build_hello(["urn:ietf:params:netconf:base:1.0"], session_id=1) + EOM)
        buf = b""
        with contextlib.suppress(asyncssh.Error, OSError):
            while data := await process.stdin.read(65536):
                buf += data
                while EOM in buf:
                    msg, buf = buf.split(EOM, 1)
                    if b"close-session" in msg:
                        mid = ncxml.parse(msg).get("message-id") or ""
                        process.stdout.write(build_ok({"message-id": mid}) + EOM)
        process.exit(0)

    server = await asyncssh.create_server(
        lambda: _AcceptAnyone(conns),
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        process_factory=serve,
        encoding=None,
        allow_scp=False,
        line_editor=False,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for conn in list(conns):
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5.0)
        await server.wait_closed()


@asynccontextmanager
async def black_hole() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never sends a byte."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


# --- the contract, once per implementation ----------------------------------------------------------
async def test_connect_reports_session_id_and_capabilities(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    c = make_client(h.port)
    assert (c.session_id, c.capabilities) == (None, ())
    await c.connect()
    assert isinstance(c.session_id, int) and c.session_id in h.agent.sessions
    for cap in REQUIRED_CAPS:
        assert cap in c.capabilities
    assert any("module=etsi-qkd-sdn-node&revision=2022-01-30" in x for x in c.capabilities)
    async with make_client(h.port) as c2:
        assert c2.session_id not in (None, c.session_id)


async def test_get_with_subtree_and_xpath_filters(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    a, _ = pair_configs(tmp_path)
    h = await start_agent(a)
    c = await connected(make_client, h)
    data = await c.get(subtree=f'<qkd_node xmlns="{NODE_NS}"><qkdn_status/><qkd_interfaces/></qkd_node>')
    assert data.tag == f"{{{NC}}}data"
    status = xp(data, "n:qkd_node/n:qkdn_status/text()")
    assert len(status) == 1 and status[0].endswith(":OPERATING")
    assert xp(data, "n:qkd_node/n:qkd_interfaces/n:qkd_interface/n:qkdi_status")
    assert not xp(data, "n:qkd_node/n:qkdn_id")
    data = await c.get(xpath="/q:qkd_node/q:qkdn_id", nsmap={"q": NODE_NS})
    assert xp(data, "n:qkd_node/n:qkdn_id/text()") == [h.node_id]
    assert not xp(data, "n:qkd_node/n:qkd_interfaces")


async def test_get_config_matches_the_reference_client(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    a, _ = pair_configs(tmp_path)
    h = await start_agent(a)
    c = await connected(make_client, h)
    data = await c.get_config()
    assert xp(data, "n:qkd_node/n:qkdn_id/text()") == [h.node_id]
    assert not xp(data, "//n:qkdn_status")  # state never in get-config
    async with h.client() as ref:
        assert etree.tostring(data, method="c14n") == etree.tostring(await ref.get_config(), method="c14n")
    candidate = await c.get_config("candidate", xpath="/q:qkd_node/q:qkdn_id", nsmap={"q": NODE_NS})
    assert xp(candidate, "n:qkd_node/n:qkdn_id/text()") == [h.node_id]


async def test_edit_config_creates_a_phys_link_and_reads_it_back(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    a, b = pair_configs(tmp_path)
    h = await start_agent(a)
    c = await connected(make_client, h)
    link = str(uuid.uuid4())
    await c.edit_config(phys_link_xml(link, h.node_id, b["node_id"], "TRANSMITTER"))
    data = await c.get_config(subtree=f'<qkd_node xmlns="{NODE_NS}"><qkd_links/></qkd_node>')
    assert xp(data, "n:qkd_node/n:qkd_links/n:qkd_link/n:qkdl_id/text()") == [link]
    role = xp(data, "string(n:qkd_node/n:qkd_links/n:qkd_link/n:phys_qkd_role)")
    assert role.endswith(":TRANSMITTER")
    # an element works too, and the caller's tree is left as it was
    mine = etree.fromstring(version_edit("from-an-element"))
    await c.edit_config(mine, default_operation="merge", error_option="rollback-on-error")
    assert mine.getparent() is None and len(mine) == 1
    data = await c.get_config()
    assert xp(data, "n:qkd_node/n:qkdn_version/text()") == ["from-an-element"]
    assert xp(data, "n:qkd_node/n:qkd_links/n:qkd_link/n:qkdl_id/text()") == [link]


async def test_invalid_edit_raises_node_rpc_error_with_the_nodes_records(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    c = await connected(make_client, h)
    with pytest.raises(NodeRpcError) as ei:
        await c.edit_config(BAD_EDIT)
    err = ei.value.first
    assert err.tag == "invalid-value" and err.type == ErrorType.APPLICATION
    assert err.path is not None and "qkd_interface" in err.path
    assert ei.value.node == f"127.0.0.1:{h.port}" and f"127.0.0.1:{h.port}" in str(ei.value)
    async with h.client() as ref:  # the records are the node's, unchanged
        with pytest.raises(NetconfRpcError) as ref_ei:
            await ref.edit_config(BAD_EDIT)
    assert ei.value.errors == ref_ei.value.errors
    await c.get_config()  # the session is still fine


async def test_lock_unlock_and_lock_denied_names_the_holder(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    c1 = await connected(make_client, h)
    c2 = await connected(make_client, h)
    await c1.lock("running")
    with pytest.raises(NodeRpcError) as ei:
        await c2.lock("running")
    assert ei.value.first.tag == "lock-denied" and ei.value.first.type == ErrorType.PROTOCOL
    assert ei.value.first.info["session-id"] == str(c1.session_id)
    await c1.unlock("running")
    await c2.lock("running")
    await c2.unlock("running")


async def test_candidate_edit_validate_confirmed_commit_then_confirming_commit(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    c = await connected(make_client, h)
    await c.lock("candidate")
    await c.edit_config(version_edit("v2"), target="candidate")
    await c.validate("candidate")
    await c.commit(confirmed=True, confirm_timeout_s=60, persist="tx-1")
    assert pending_confirmation(h)
    assert xp(await c.get_config(), "n:qkd_node/n:qkdn_version/text()") == ["v2"]
    await c.commit(persist_id="tx-1")
    assert not pending_confirmation(h)
    assert xp(await c.get_config(), "n:qkd_node/n:qkdn_version/text()") == ["v2"]
    await c.unlock("candidate")


async def test_confirmed_commit_then_cancel_commit(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    c = await connected(make_client, h)
    await c.edit_config(version_edit("tentative"), target="candidate")
    await c.commit(confirmed=True, confirm_timeout_s=60)
    assert xp(await c.get_config(), "n:qkd_node/n:qkdn_version/text()") == ["tentative"]
    await c.cancel_commit()
    assert not xp(await c.get_config(), "n:qkd_node/n:qkdn_version")
    with pytest.raises(NodeRpcError):
        await c.cancel_commit()  # nothing left to cancel


async def test_discard_changes(make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    c = await connected(make_client, h)
    await c.edit_config(version_edit("draft"), target="candidate")
    assert xp(await c.get_config("candidate"), "n:qkd_node/n:qkdn_version/text()") == ["draft"]
    await c.discard_changes()
    assert not xp(await c.get_config("candidate"), "n:qkd_node/n:qkdn_version")
    assert not xp(await c.get_config(), "n:qkd_node/n:qkdn_version")


async def test_get_schema(make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    c = await connected(make_client, h)
    text = await c.get_schema("etsi-qkd-sdn-node")
    assert text.lstrip().startswith("module etsi-qkd-sdn-node")
    assert await c.get_schema("etsi-qkd-sdn-node", version="2022-01-30") == text
    with pytest.raises(NodeRpcError) as ei:
        await c.get_schema("no-such-module")
    assert ei.value.first.tag == "invalid-value"


async def test_subscription_delivers_a_config_change_made_by_another_client(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    c = await connected(make_client, h)
    await c.subscribe()
    it = c.notifications()
    async with h.client() as other:
        await other.edit_config(version_edit("seen"))
        n = await next_config_change(it)
        assert n.event_time.tzinfo is not None
        assert xp(n.body, "ncn:changed-by/ncn:session-id/text()") == [str(other.session_id)]
    await c.close()
    await asyncio.wait_for(_drain(it), 2.0)  # the iteration ends with the session


async def _drain(it: AsyncIterator[Notification]) -> list[Notification]:
    return [n async for n in it]


async def test_unreachable_node_raises_within_the_timeout(make_client: ClientFactory) -> None:
    port = free_port()  # nothing listens there
    c = make_client(port, timeout_s=2.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(NodeUnreachableError) as ei:
        await c.connect()
    assert loop.time() - t0 < 2.0
    assert f"127.0.0.1:{port}" in str(ei.value) and ei.value.first.type == ErrorType.TRANSPORT
    async with black_hole() as hole:  # TCP accepted, SSH never spoken
        c = make_client(hole, timeout_s=0.5)
        t0 = loop.time()
        with pytest.raises(NodeUnreachableError):
            await c.connect()
        assert loop.time() - t0 < 0.5 + 1.5


async def test_a_request_without_reply_times_out(make_client: ClientFactory) -> None:
    async with fake_silent_node() as port:
        c = make_client(port, timeout_s=0.5, username="anyone", password="x")
        await c.connect()
        assert c.session_id == 1
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(NodeUnreachableError) as ei:
            await c.get_config()
        elapsed = loop.time() - t0
        assert 0.4 < elapsed < 0.5 + 1.5
        assert "no reply within" in str(ei.value)
        t0 = loop.time()
        await c.close()
        assert loop.time() - t0 < 2.0


async def test_a_node_that_dies_mid_session(
    make_client: ClientFactory,
    start_agent: AgentFactory,
    agent_connections: set[asyncssh.SSHServerConnection],
    tmp_path: Path,
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    c = await connected(make_client, h, timeout_s=5.0)
    await c.subscribe()
    it = c.notifications()
    await c.get_config()
    # the process dies: its connections drop, its sessions end
    for conn in list(agent_connections):
        conn.abort()
    await h.agent.stop()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(NodeUnreachableError) as ei:
        await c.get_config()
    assert loop.time() - t0 < 2.0, "noticed the lost session, not the request timeout"
    assert f"127.0.0.1:{h.port}" in str(ei.value)
    with pytest.raises(NodeUnreachableError):
        await asyncio.wait_for(_drain(it), 5.0)  # the feed ends with the lost session, as an error
    with pytest.raises(NodeUnreachableError):
        await c.lock("running")
    await asyncio.wait_for(c.close(), 5.0)


async def test_close_is_idempotent_and_later_calls_fail(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    never = make_client(h.port)
    await never.close()  # closing an unconnected client is fine
    with pytest.raises(RuntimeError):
        await never.connect()  # one client, one session
    c = await connected(make_client, h)
    sid = c.session_id
    await c.close()
    await c.close()
    await wait_until(lambda: sid not in h.agent.sessions)
    with pytest.raises(NodeUnreachableError) as ei:
        await c.get_config()
    assert "closed" in str(ei.value)
    assert await asyncio.wait_for(_drain(c.notifications()), 1.0) == []


async def test_bad_arguments_are_refused_before_sending(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    c = await connected(make_client, h)
    with pytest.raises(ValueError, match="datastore"):
        await c.get_config("operational")
    with pytest.raises(ValueError, match="not both"):
        await c.get(subtree=f'<qkd_node xmlns="{NODE_NS}"/>', xpath="/q:qkd_node", nsmap={"q": NODE_NS})
    with pytest.raises(ValueError, match="well-formed"):
        await c.get(subtree="<qkd_node")
    with pytest.raises(ValueError, match="default-operation"):
        await c.edit_config(version_edit("x"), default_operation="frobnicate")
    with pytest.raises(ValueError, match="confirmed"):
        await c.commit(persist="tok")
    with pytest.raises(ValueError, match="not both"):
        await c.commit(confirmed=True, persist="a", persist_id="b")
    assert xp(await c.get_config(), "n:qkd_node/n:qkdn_id/text()") == [h.node_id]


async def test_host_key_verification(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    key = asyncssh.read_private_key(str(h.data_dir / "ssh_host_ed25519_key"))
    good = tmp_path / "known_hosts"
    good.write_bytes(f"[127.0.0.1]:{h.port} ".encode() + key.export_public_key())
    bad = tmp_path / "known_hosts.bad"
    other = asyncssh.generate_private_key("ssh-ed25519")
    bad.write_bytes(f"[127.0.0.1]:{h.port} ".encode() + other.export_public_key())
    async with make_client(h.port, known_hosts=str(good)) as c:
        assert c.session_id is not None
    with pytest.raises(NodeUnreachableError):
        await make_client(h.port, known_hosts=str(bad)).connect()


async def test_public_key_authentication(
    make_client: ClientFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "id").write_bytes(key.export_private_key())
    (tmp_path / "id.pub").write_bytes(key.export_public_key())
    cfg = node_config(tmp_path, "n1")
    cfg["netconf"]["users"].append({"name": "ctrl", "authorized_keys": str(tmp_path / "id.pub")})
    h = await start_agent(cfg)
    async with make_client(h.port, username="ctrl", password=None, client_keys=(str(tmp_path / "id"),)) as c:
        assert c.session_id is not None
    with pytest.raises(NodeUnreachableError):
        await make_client(h.port, username="ctrl", password="wrong").connect()


# --- ncclient specifics, and both clients side by side -----------------------------------------------
async def test_ncclient_never_blocks_the_event_loop() -> None:
    """While ncclient waits (connecting to a mute port, then for a reply that never comes), the loop
    keeps running: a 10 ms ticker never misses more than a few ticks, though each call lasts ~1 s.
    """
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    async def tick() -> None:
        while True:
            stamps.append(loop.time())
            await asyncio.sleep(0.01)

    ticker = loop.create_task(tick())
    durations: list[float] = []
    try:
        async with black_hole() as hole:
            c = NcclientNodeClient(NodeEndpoint("127.0.0.1", hole, "anyone", password="x", timeout_s=1.0))
            t0 = loop.time()
            with pytest.raises(NodeUnreachableError):
                await c.connect()
            durations.append(loop.time() - t0)
        async with fake_silent_node() as port:
            endpoint = NodeEndpoint("127.0.0.1", port, "anyone", password="x", timeout_s=1.0)
            async with NcclientNodeClient(endpoint) as c:
                t0 = loop.time()
                with pytest.raises(NodeUnreachableError):
                    await c.get()
                durations.append(loop.time() - t0)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(durations) >= 0.9
    assert max(gaps) < 0.25, f"the event loop stalled for {max(gaps):.3f} s"


async def test_ncclient_session_uses_tcp_nodelay_and_its_own_tick(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    endpoint = NodeEndpoint("127.0.0.1", h.port, USER, password=PASSWORD, timeout_s=RPC_TIMEOUT_S)
    async with NcclientNodeClient(endpoint) as c:
        sock = c._session.transport.sock  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert c._session._tick_s == DEFAULT_TICK_S  # type: ignore[union-attr]
    assert ncclient_session.TICK == 0.1  # ncclient's module constant is left alone
    # Requests leave when they are queued, not at the next tick: with a 5 s tick, 40 round trips
    # would take minutes if each waited for it.
    async with NcclientNodeClient(endpoint, tick_s=5.0) as c:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(20):
            await c.lock("running")
            await c.unlock("running")
        assert loop.time() - t0 < 5.0


async def test_both_clients_return_the_same_data_and_the_same_errors(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    a, _ = pair_configs(tmp_path)
    h = await start_agent(a)
    endpoint = NodeEndpoint("127.0.0.1", h.port, USER, password=PASSWORD, timeout_s=RPC_TIMEOUT_S)
    async with node_client(endpoint, "asyncssh") as fast, node_client(endpoint, "ncclient") as nc:
        subtree = f'<qkd_node xmlns="{NODE_NS}"><qkd_interfaces/></qkd_node>'
        got = [await c.get_config(subtree=subtree) for c in (fast, nc)]
        assert etree.tostring(got[0], method="c14n") == etree.tostring(got[1], method="c14n")
        assert await fast.get_schema("etsi-qkd-node-types") == await nc.get_schema("etsi-qkd-node-types")
        errors = []
        for c in (fast, nc):
            with pytest.raises(NodeRpcError) as ei:
                await c.edit_config(BAD_EDIT)
            errors.append(ei.value.errors)
            assert str(ei.value).startswith(f"127.0.0.1:{h.port}: rpc-error invalid-value")
        assert errors[0] == errors[1]


def test_ncclient_rpc_error_converts_like_qsdn_parses_replies() -> None:
    """With raise_mode NONE ncclient does not raise; if an RPCError comes anyway, same records."""
    raw = f"""<rpc-reply xmlns="{NC}" message-id="urn:uuid:1"><rpc-error>
      <error-type>protocol</error-type><error-tag>lock-denied</error-tag>
      <error-severity>error</error-severity>
      <error-message xml:lang="en">locked by session 7</error-message>
      <error-info><session-id>7</session-id></error-info></rpc-error><rpc-error>
      <error-type>application</error-type><error-tag>invalid-value</error-tag>
      <error-severity>error</error-severity>
      <error-path xmlns:n="{NODE_NS}">/n:qkd_node/n:qkdn_id</error-path>
      <error-message xml:lang="en">bad id</error-message></rpc-error></rpc-reply>"""
    expected = parse_rpc_reply(ncxml.parse(raw.encode())).errors
    reply = RPCReply(raw)
    reply.parse()
    single = reply.errors[0]
    assert isinstance(single, RPCError)
    assert rpc_error_infos(single) == expected[:1]
    assert rpc_error_infos(RPCError(to_ele(raw), errs=reply.errors)) == expected
    assert rpc_error_infos(reply.errors[1])[0].path == "/n:qkd_node/n:qkdn_id"


def test_endpoint_hides_the_password_and_names_the_node() -> None:
    ep = NodeEndpoint("::1", 830, "admin", password="s3cret-pw", client_keys=("/k/id",))
    assert "s3cret-pw" not in repr(ep) and "s3cret-pw" not in str(ep)
    assert ep.address == "[::1]:830" and ep.client_keys == ("/k/id",)
    with pytest.raises(ValueError):
        NodeEndpoint("h", 830, "admin", timeout_s=0)
    assert str(NodeUnreachableError(ep.address, "refused")) == "[::1]:830 unreachable: refused"


async def test_notification_feed_keeps_the_newest_when_the_consumer_lags() -> None:
    feed = NotificationFeed("n:830", maxsize=3)
    body = etree.Element("x")
    sent = [Notification(event_time=_utc(i), body=body) for i in range(5)]
    for n in sent:
        feed.put(n)
    feed.end()
    assert [n async for n in feed] == sent[2:]
    assert [n async for n in feed] == []  # ended for every later iteration too


def _utc(second: int) -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC)
