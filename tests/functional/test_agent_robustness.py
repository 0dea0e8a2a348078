"""The agent under hostile or careless clients: exact bytes over real SSH on loopback.

Raw asyncssh sessions send what a NETCONF client library never would: broken RFC 6242 framing,
messages above the configured ``max_message_bytes``, XML with DTDs and entities, bad hellos, and
connections that vanish half-way. After each test the agent must have no session left, no task or
thread more than before, and still answer a well-behaved client.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
import pytest_asyncio

from agent.config import parse_config
from agent.server import build_agent
from qsdn.errors import ErrorType, QsdnError
from qsdn.netconf import messages
from qsdn.netconf import xml as ncxml
from qsdn.netconf.framing import FramingDecoder
from qsdn.netconf.messages import RpcReply
from qsdn.yang import SchemaContext
from tests.functional.agents import NODE_NS, PASSWORD, USER, AgentHandle, node_config, wait_until

# One event loop for the module: most tests share one agent (a fresh baseline per test), the others
# start agents with their own settings on the same loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
EOM = b"]]>]]>"
BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"
LIMIT = 8192  # max_message_bytes of the agents under test (the configuration's minimum is 4096)


def hello(*caps: str) -> bytes:
    body = "".join(f"<capability>{c}</capability>" for c in caps)
    return f'<hello xmlns="{NC}"><capabilities>{body}</capabilities></hello>'.encode() + EOM


HELLO_11 = hello(BASE_10, BASE_11)
HELLO_10 = hello(BASE_10)


def chunk(message: bytes) -> bytes:
    return b"\n#%d\n" % len(message) + message + b"\n##\n"


def rpc(op: str, mid: int = 1) -> bytes:
    return f'<rpc xmlns="{NC}" message-id="{mid}">{op}</rpc>'.encode()


GET_CONFIG = "<get-config><source><running/></source></get-config>"


# --- raw sessions ----------------------------------------------------------------------------------


class RawSession:
    """One SSH connection with the netconf subsystem, driven byte by byte."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        writer: asyncssh.SSHWriter[bytes],
        reader: asyncssh.SSHReader[bytes],
    ) -> None:
        self.conn = conn
        self.writer = writer
        self.reader = reader
        self.received = bytearray()
        self.decoder = FramingDecoder(64 * 1024 * 1024)
        self.server_hello: bytes | None = None
        self.chunked = True  # what our hello announces
        self.backlog: list[bytes] = []

    @classmethod
    async def open(cls, port: int) -> RawSession:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                "127.0.0.1", port, username=USER, password=PASSWORD, known_hosts=None, agent_path=None
            ),
            10,
        )
        writer, reader, _ = await conn.open_session(subsystem="netconf", encoding=None)
        return cls(conn, writer, reader)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def _read(self, timeout_s: float) -> bytes:
        data = await asyncio.wait_for(self.reader.read(262144), timeout_s)
        self.received += data
        return data

    async def _pump(self, timeout_s: float) -> None:
        """Read once and decode what arrived: the server's hello, then its messages."""
        data = await self._read(timeout_s)
        if not data:
            raise AssertionError("the server closed the session")
        for msg in self.decoder.feed(data):
            if self.server_hello is None:
                self.server_hello = msg
                if self.chunked:
                    self.decoder.switch_to_chunked()
                    self.backlog += self.decoder.feed(b"")
            else:
                self.backlog.append(msg)

    async def start(self, client_hello: bytes = HELLO_11) -> None:
        """Send our hello and read the server's."""
        self.chunked = BASE_11.encode() in client_hello
        self.write(client_hello)
        while self.server_hello is None:
            await self._pump(5.0)

    async def reply(self, timeout_s: float = 5.0) -> RpcReply:
        """The next message after the hello, parsed as an rpc-reply."""
        async with asyncio.timeout(timeout_s):
            while not self.backlog:
                await self._pump(timeout_s)
        return messages.parse_rpc_reply(ncxml.parse(self.backlog.pop(0)))

    async def until_closed(self, timeout_s: float = 5.0) -> bytes:
        """Read until the server ends the session; everything received on it."""
        async with asyncio.timeout(timeout_s):
            while await self._read(timeout_s):
                pass
        return bytes(self.received)

    async def close(self) -> None:
        self.conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.conn.wait_closed(), 5)


def replies_in(data: bytes) -> list[RpcReply]:
    """Every rpc-reply in a byte stream (end-of-message or chunked framing, as the server used)."""
    out = []
    for piece in data.replace(b"\n##\n", EOM).split(EOM):
        start = piece.find(b"<rpc-reply")
        if start >= 0:
            out.append(messages.parse_rpc_reply(ncxml.parse(piece[start:])))
    return out


# --- leak checks ---------------------------------------------------------------------------------


@dataclass
class Baseline:
    """Tasks and threads of a warmed-up agent, to compare with once the test's sessions are gone."""

    handle: AgentHandle
    tasks: set[asyncio.Task[object]]
    threads: int

    @classmethod
    async def take(cls, handle: AgentHandle, *, warm_up: bool = False) -> Baseline:
        if warm_up:
            # One full session first, so that lazily created state (asyncssh internals) is part of the
            # baseline rather than counted as a leak.
            await assert_serves(handle)
        await wait_until(lambda: not handle.agent.sessions)
        await asyncio.sleep(0.02)
        return cls(handle, set(asyncio.all_tasks()), threading.active_count())

    def new_tasks(self) -> list[str]:
        me = asyncio.current_task()
        return sorted(t.get_name() for t in asyncio.all_tasks() - self.tasks if t is not me and not t.done())

    async def check(self) -> None:
        """No session, task or thread left behind, and the agent still serves a new session."""
        agent = self.handle.agent
        await wait_until(lambda: not agent.sessions, timeout_s=10)
        await wait_until(lambda: not self.new_tasks(), timeout_s=10)
        await wait_until(lambda: threading.active_count() <= self.threads, timeout_s=10)
        assert len(agent.sessions) == 0
        assert self.new_tasks() == []
        assert threading.active_count() <= self.threads, [t.name for t in threading.enumerate()]
        await assert_serves(self.handle)
        await wait_until(lambda: not agent.sessions and not self.new_tasks(), timeout_s=10)


async def assert_serves(handle: AgentHandle) -> None:
    async with handle.client(timeout_s=10) as c:
        data = await c.get_config()
        ids = data.xpath("n:qkd_node/n:qkdn_id/text()", namespaces={"n": NODE_NS})
        assert ids == [handle.node_id]


WORKERS = 4


async def _pin_default_executor() -> None:
    """Give the loop a default executor of fixed size with every worker started.

    asyncssh's client resolves addresses and builds its options in the loop's default executor, whose
    pool grows on demand; with all its workers started up front they belong to the baseline, and any
    thread beyond it is one the agent started and did not end.
    """
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="test-loop"))
    barrier = threading.Barrier(WORKERS)
    await asyncio.gather(*(loop.run_in_executor(None, barrier.wait, 5.0) for _ in range(WORKERS)))


@pytest_asyncio.fixture(scope="module", loop_scope="module", autouse=True)
async def pinned_executor() -> AsyncIterator[None]:
    await _pin_default_executor()
    yield


@asynccontextmanager
async def running_agent(schema: SchemaContext, tmp: Path, **netconf: object) -> AsyncIterator[AgentHandle]:
    cfg = node_config(tmp, "robust", netconf={"max_message_bytes": LIMIT, **netconf})
    config = parse_config(cfg, source="robust.yaml")
    agent = build_agent(config, schema)
    await agent.start()
    try:
        assert agent.port is not None
        yield AgentHandle(agent, config.node_id, agent.port, config.data_dir, cfg)
    finally:
        await agent.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(
    schema: SchemaContext, tmp_path_factory: pytest.TempPathFactory, pinned_executor: None
) -> AsyncIterator[AgentHandle]:
    async with running_agent(schema, tmp_path_factory.mktemp("robust")) as h:
        await Baseline.take(h, warm_up=True)
        yield h


@pytest_asyncio.fixture(loop_scope="module")
async def agent(shared: AgentHandle) -> tuple[AgentHandle, Baseline]:
    """The shared agent (max_message_bytes 8192) and a baseline taken when the test starts."""
    return shared, await Baseline.take(shared)


def only_error(reply: RpcReply, tag: str, type: ErrorType) -> None:
    assert not reply.ok
    assert [(e.tag, e.type) for e in reply.errors] == [(tag, type)], reply.errors


# --- framing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [
        pytest.param(b"\n#abc\n", id="size-not-digits"),
        pytest.param(b"\n#0\n", id="size-zero"),
        pytest.param(b"\n#01\n", id="size-leading-zero"),
        pytest.param(b"#5\nhello", id="no-leading-lf"),
        pytest.param(b"\n##\n", id="end-of-chunks-without-chunk"),
        pytest.param(b"\n#4294967296\n", id="size-above-rfc-6242-maximum"),
        pytest.param(b"\n#5\n<rpc/>junk", id="chunk-followed-by-junk"),
    ],
)
async def test_bad_chunk_header_ends_the_session(agent: tuple[AgentHandle, Baseline], junk: bytes) -> None:
    h, base = agent
    s = await RawSession.open(h.port)
    await s.start()
    s.write(junk)
    data = await s.until_closed()
    # RFC 6242 section 4.2: a framing error ends the session; qsdn says why first.
    (reply,) = replies_in(data[data.index(b"</hello>") :])
    only_error(reply, "malformed-message", ErrorType.RPC)
    await s.close()
    await base.check()


async def test_chunk_above_the_message_limit_is_refused_before_it_is_read(
    agent: tuple[AgentHandle, Baseline],
) -> None:
    h, base = agent
    s = await RawSession.open(h.port)
    await s.start()
    s.write(b"\n#%d\n" % (LIMIT + 1) + b"x" * 100)
    data = await s.until_closed()
    (reply,) = replies_in(data[data.index(b"</hello>") :])
    only_error(reply, "too-big", ErrorType.TRANSPORT)
    await s.close()
    await base.check()


@pytest.fixture
def decoder_peaks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """What the agent's framing decoders hold after each ``feed`` (the data buffered between reads)."""
    peaks: list[int] = []
    feed = FramingDecoder.feed

    def watched(self: FramingDecoder, data: bytes) -> list[bytes]:
        try:
            return feed(self, data)
        finally:
            if self.max_message_bytes == LIMIT:  # the agent's, not a client's
                peaks.append(self.buffered_bytes)

    monkeypatch.setattr(FramingDecoder, "feed", watched)
    return peaks


async def _stream(s: RawSession, piece: bytes, total_bytes: int) -> bytes:
    """Send ``piece`` until ``total_bytes`` are sent or the server closes; what the server sent."""
    sent = 0
    with contextlib.suppress(BrokenPipeError, ConnectionError, asyncssh.Error):
        while sent < total_bytes and not s.writer.channel.is_closing():
            s.write(piece)
            sent += len(piece)
            await asyncio.wait_for(s.writer.drain(), 5)
            if sent < 2 * LIMIT:
                await asyncio.sleep(0.005)  # slowly at first, so that the agent reads piece by piece
    return await s.until_closed()


async def test_message_of_many_chunks_above_the_limit_ends_the_session(
    agent: tuple[AgentHandle, Baseline], decoder_peaks: list[int]
) -> None:
    h, base = agent
    s = await RawSession.open(h.port)
    await s.start()
    # One message that never ends: 1000-byte chunks, no end-of-chunks marker, up to 4 MiB in all.
    data = await _stream(s, b"\n#1000\n" + b"x" * 1000, 4 * 1024 * 1024)
    (reply,) = replies_in(data[data.index(b"</hello>") :])
    only_error(reply, "too-big", ErrorType.TRANSPORT)
    # The agent held the message as it grew, and never more of it than the limit.
    assert LIMIT // 2 <= max(decoder_peaks) <= LIMIT + 32, max(decoder_peaks)
    await s.close()
    await base.check()


async def test_end_of_message_stream_without_delimiter_ends_the_session(
    agent: tuple[AgentHandle, Baseline], decoder_peaks: list[int]
) -> None:
    h, base = agent
    s = await RawSession.open(h.port)
    await s.start(HELLO_10)  # base 1.0 only: end-of-message framing stays
    data = await _stream(s, b"<" + b"x" * 999, 4 * 1024 * 1024)
    (reply,) = replies_in(data[data.index(b"</hello>") :])
    only_error(reply, "too-big", ErrorType.TRANSPORT)
    assert LIMIT // 2 <= max(decoder_peaks) <= LIMIT + 32, max(decoder_peaks)
    await s.close()
    await base.check()


async def test_oversized_hello_ends_the_session(agent: tuple[AgentHandle, Baseline]) -> None:
    h, base = agent
    s = await RawSession.open(h.port)
    s.write(b"<hello " + b"x" * (2 * LIMIT))
    data = await s.until_closed()
    (reply,) = replies_in(data[data.index(b"</hello>") :])
    only_error(reply, "too-big", ErrorType.TRANSPORT)
    await s.close()
    await base.check()


# --- hostile XML -----------------------------------------------------------------------------------

SECRET = "qsdn-secret-6f1c7a3e"


def _hostile(secret_file: Path, http_port: int) -> dict[str, bytes]:
    url = secret_file.as_uri()
    op = f'<get-config><source><running/></source><filter type="subtree"><x xmlns="{NODE_NS}">&e;</x></filter></get-config>'
    body = f'<rpc xmlns="{NC}" message-id="7">{op}</rpc>'
    laughs = '<!ENTITY a "lol">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)
    )
    return {
        "xxe-file": f'<?xml version="1.0"?><!DOCTYPE rpc [<!ENTITY e SYSTEM "{url}">]>{body}'.encode(),
        "xxe-parameter-entity": (
            f'<!DOCTYPE rpc [<!ENTITY % p SYSTEM "{url}"> %p; <!ENTITY e "x">]>{body}'.encode()
        ),
        "xxe-http": (f'<!DOCTYPE rpc [<!ENTITY e SYSTEM "http://127.0.0.1:{http_port}/x">]>{body}'.encode()),
        "external-dtd": f'<!DOCTYPE rpc SYSTEM "http://127.0.0.1:{http_port}/d.dtd">{body.replace("&e;", "")}'.encode(),
        "billion-laughs": f"<!DOCTYPE rpc [{laughs}]>{body.replace('&e;', '&j;')}".encode(),
        "quadratic-blowup": (
            f'<!DOCTYPE rpc [<!ENTITY e "{"A" * 1000}">]>{body.replace("&e;", "&e;" * 1000)}'.encode()
        ),
        "doctype-after-comment": f"<!-- hi --><!DOCTYPE rpc>{body.replace('&e;', '')}".encode(),
        "undeclared-entity": body.encode(),
    }


HOSTILE_IDS = [
    "xxe-file",
    "xxe-parameter-entity",
    "xxe-http",
    "external-dtd",
    "billion-laughs",
    "quadratic-blowup",
    "doctype-after-comment",
    "undeclared-entity",
]


@pytest.mark.parametrize("kind", HOSTILE_IDS)
async def test_dtd_and_entities_are_refused_without_being_resolved(
    agent: tuple[AgentHandle, Baseline], tmp_path: Path, kind: str
) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET + "\n")
    fetched: list[bytes] = []

    async def on_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fetched.append(await reader.read(1024))
        writer.close()

    http = await asyncio.start_server(on_http, "127.0.0.1", 0)
    try:
        http_port = http.sockets[0].getsockname()[1]
        h, base = agent
        s = await RawSession.open(h.port)
        await s.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        s.write(chunk(_hostile(secret_file, http_port)[kind]))
        reply = await s.reply()
        assert loop.time() - t0 < 2.0, "refusing the message took long: was it expanded?"
        only_error(reply, "malformed-message", ErrorType.RPC)
        # The session goes on: a well-formed request on it is answered.
        s.write(chunk(rpc(GET_CONFIG, 8)))
        ok = await s.reply()
        assert ok.data is not None and ok.attrs.get("message-id") == "8"
        await s.close()
        assert SECRET.encode() not in s.received
        assert fetched == [], "the agent fetched an external entity or DTD"
        await base.check()
    finally:
        http.close()
        await http.wait_closed()


async def test_dtd_in_hello_ends_the_session_without_reading_the_file(
    agent: tuple[AgentHandle, Baseline], tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    h, base = agent
    bad_hellos = h.agent.stats.in_bad_hellos
    s = await RawSession.open(h.port)
    body = HELLO_11.replace(b"<capability>" + BASE_10.encode(), b"<capability>&e;" + BASE_10.encode())
    s.write(f'<!DOCTYPE hello [<!ENTITY e SYSTEM "{secret_file.as_uri()}">]>'.encode() + body)
    data = await s.until_closed()
    assert SECRET.encode() not in data
    assert h.agent.stats.in_bad_hellos == bad_hellos + 1
    await s.close()
    await base.check()


# --- bad hellos ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"garbage!" + HELLO_11, id="garbage-before-hello"),
        pytest.param(hello("urn:example:not-a-base"), id="no-base-capability"),
        pytest.param(rpc(GET_CONFIG) + EOM, id="rpc-before-hello"),
        pytest.param(
            HELLO_11.replace(b"</hello>", b"<session-id>4</session-id></hello>"), id="client-sends-session-id"
        ),
        pytest.param(HELLO_11.replace(NC.encode(), b"urn:example:wrong"), id="hello-in-wrong-namespace"),
        pytest.param(b"<hello" + EOM, id="hello-not-well-formed"),
        pytest.param(f'<hello xmlns="{NC}"/>'.encode() + EOM, id="hello-without-capabilities"),
    ],
)
async def test_bad_hello_ends_the_session(agent: tuple[AgentHandle, Baseline], first: bytes) -> None:
    h, base = agent
    bad_hellos = h.agent.stats.in_bad_hellos
    s = await RawSession.open(h.port)
    s.write(first)
    data = await s.until_closed()
    # RFC 6241 section 8.1: the server's hello, then nothing: no reply to an rpc sent before hello.
    assert data.count(b"<hello") == 1 and data.endswith(b"</hello>" + EOM)
    assert h.agent.stats.in_bad_hellos == bad_hellos + 1
    await s.close()
    await base.check()


async def test_rpc_pipelined_behind_the_hello_is_answered(agent: tuple[AgentHandle, Baseline]) -> None:
    h, base = agent
    s = await RawSession.open(h.port)
    s.write(HELLO_11 + chunk(rpc(GET_CONFIG, 1)) + chunk(rpc(GET_CONFIG, 2)))
    first, second = await s.reply(), await s.reply()
    assert [first.attrs["message-id"], second.attrs["message-id"]] == ["1", "2"]
    await s.close()
    await base.check()


# --- clients that vanish ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"", id="after-hello"),
        pytest.param(b"\n#400\n" + rpc(GET_CONFIG)[:60], id="inside-a-chunk"),
        pytest.param(b"\n#", id="inside-a-chunk-header"),
        pytest.param(chunk(rpc(GET_CONFIG))[:-2], id="inside-end-of-chunks"),
    ],
)
async def test_client_that_vanishes_mid_message(agent: tuple[AgentHandle, Baseline], tail: bytes) -> None:
    h, base = agent
    s = await RawSession.open(h.port)
    await s.start()
    s.write(tail)
    await s.writer.drain()
    await wait_until(lambda: len(h.agent.sessions) == 1)
    s.conn.abort()
    await base.check()


async def test_client_that_vanishes_in_its_hello(agent: tuple[AgentHandle, Baseline]) -> None:
    h, base = agent
    s = await RawSession.open(h.port)
    s.write(HELLO_11[:40])
    await s.writer.drain()
    await wait_until(lambda: len(h.agent.sessions) == 1)
    s.conn.abort()
    await base.check()


async def test_client_that_vanishes_while_replies_are_being_sent(agent: tuple[AgentHandle, Baseline]) -> None:
    h, base = agent
    s = await RawSession.open(h.port)
    await s.start()
    get = "<get/>"  # state data and monitoring: the largest reply the agent makes
    s.write(b"".join(chunk(rpc(get, i)) for i in range(300)))
    await s.writer.drain()
    # Let the agent get going on the batch, then drop the connection without reading a byte.
    await wait_until(lambda: any(x.stats.in_rpcs > 0 for x in h.agent.sessions.values()))
    s.conn.abort()
    await base.check()


async def test_fifty_concurrent_sessions_and_ten_killed_mid_way(agent: tuple[AgentHandle, Baseline]) -> None:
    h, base = agent

    async def good() -> int:
        async with h.client(timeout_s=30) as c:
            results = [await c.get_config() for _ in range(3)]
            return sum(
                r.xpath("n:qkd_node/n:qkdn_id/text()", namespaces={"n": NODE_NS}) == [h.node_id]
                for r in results
            )

    async def killed(i: int) -> None:
        s = await RawSession.open(h.port)
        await s.start()
        # half a request, or a batch of requests whose replies are never read
        s.write(
            b"\n#300\n" + rpc(GET_CONFIG)[:50]
            if i % 2
            else b"".join(chunk(rpc(GET_CONFIG, j)) for j in range(20))
        )
        await s.writer.drain()
        await asyncio.sleep(0.05 * (i % 5))
        s.conn.abort()

    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(h.agent.sessions))
            await asyncio.sleep(0.005)

    watcher = asyncio.get_running_loop().create_task(watch(), name="test-watch")
    try:
        results = await asyncio.gather(*(good() for _ in range(50)), *(killed(i) for i in range(10)))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert results[:50] == [3] * 50
    assert peak >= 40, f"only {peak} sessions were ever open at once"
    await base.check()


async def test_session_limit_refuses_extra_sessions_and_recovers(
    schema: SchemaContext, tmp_path: Path
) -> None:
    async with running_agent(schema, tmp_path, max_sessions=2) as h:
        base = await Baseline.take(h, warm_up=True)
        async with h.client() as c1, h.client() as c2:
            with pytest.raises(QsdnError):
                async with h.client(timeout_s=5) as c3:
                    await c3.get_config()
            await c1.get_config()
            await c2.get_config()
        assert h.agent.stats.dropped_sessions >= 1
        await base.check()


# --- timeouts --------------------------------------------------------------------------------------


async def test_idle_session_is_closed(schema: SchemaContext, tmp_path: Path) -> None:
    async with running_agent(schema, tmp_path, idle_timeout_s=1) as h:
        base = await Baseline.take(h, warm_up=True)
        loop = asyncio.get_running_loop()
        c = h.client()
        await c.connect()
        try:
            t0 = loop.time()
            await c.get_config()
            await asyncio.sleep(0.5)
            await c.get_config()  # activity restarts the clock
            t1 = loop.time()
            await wait_until(lambda: not h.agent.sessions, timeout_s=5)
            assert loop.time() - t1 >= 0.9
            assert loop.time() - t0 >= 1.4
            with pytest.raises(QsdnError):
                await c.get_config()
        finally:
            await c.close()
        await base.check()


async def test_subscribed_session_is_not_idle(schema: SchemaContext, tmp_path: Path) -> None:
    async with running_agent(schema, tmp_path, idle_timeout_s=1) as h:
        base = await Baseline.take(h, warm_up=True)
        async with h.client() as c:
            await c.create_subscription()
            await asyncio.sleep(1.6)
            assert len(h.agent.sessions) == 1
            await c.get_config()
        await base.check()


async def test_client_that_never_says_hello_is_closed(schema: SchemaContext, tmp_path: Path) -> None:
    async with running_agent(schema, tmp_path, hello_timeout_s=1) as h:
        base = await Baseline.take(h, warm_up=True)
        s = await RawSession.open(h.port)
        data = await s.until_closed(timeout_s=5)
        assert data.endswith(b"</hello>" + EOM)
        await s.close()
        await base.check()


# --- output back-pressure ---------------------------------------------------------------------------------


async def test_client_that_never_reads_cannot_grow_the_output_buffer(
    schema: SchemaContext, tmp_path: Path
) -> None:
    async with running_agent(schema, tmp_path) as h:
        base = await Baseline.take(h, warm_up=True)
        s = await RawSession.open(h.port)
        await s.start()
        s.write(b"".join(chunk(rpc("<get/>", i)) for i in range(600)))  # about 45 KB of requests
        await s.writer.drain()
        sess = next(iter(h.agent.sessions.values()))
        limit = 1024 * 1024  # with back-pressure: about one SSH window of replies
        try:
            for _ in range(40):
                await asyncio.sleep(0.05)
                buffered = sess.process.channel.get_write_buffer_size()
                assert buffered <= limit, (
                    f"the agent buffers {buffered} bytes for a client that does not read"
                )
        finally:
            s.conn.abort()
            await base.check()
