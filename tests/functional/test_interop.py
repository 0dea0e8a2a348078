"""Interoperability with the operator tools: netconf-console2 and ncclient against real agents.

netconf-console2 runs as a real subprocess (``asyncio.create_subprocess_exec``), ncclient runs in a
worker thread (``asyncio.to_thread``): either way the in-process agents keep serving on this event
loop. Both cover the acceptance list of the agent issue: hello, ``<get>`` with a subtree filter,
``<get-config>``, ``<edit-config>`` creating a PHYS link on both ends of a pair (keys then flow),
lock/unlock with a second session denied, ``<get-schema>`` of both ETSI modules, and
``<create-subscription>`` followed by ``sdqkdn_link_down`` when the emulated fibre is cut.

Every subprocess and every blocking call has a timeout; subprocesses are killed and ncclient
sessions closed in ``finally``. Nothing here depends on how fast the machine is: waits are for
conditions (a reply on stdout, a lock in the datastore, bits in the key store), bounded generously.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest
from lxml import etree
from ncclient import manager
from ncclient.operations.rpc import RPCError
from ncclient.xml_ import to_ele

from tests.functional.agents import (
    NODE_NS,
    PASSWORD,
    USER,
    AgentFactory,
    AgentHandle,
    node_config,
    pair_configs,
    phys_link_xml,
    wait_until,
)

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
NOTIF_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"
EMU_NS = "urn:qsdn:yang:qsdn-qkd-emulation"
NS = {"nc": NC_NS, "n": NODE_NS, "notif": NOTIF_NS}

NETCONF_CONSOLE = Path(sys.executable).parent / "netconf-console2"
ETSI_MODULES = ("etsi-qkd-sdn-node", "etsi-qkd-node-types")
REQUIRED_CAPS = (
    "urn:ietf:params:netconf:base:1.1",
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    "urn:ietf:params:netconf:capability:notification:1.0",
    "urn:ietf:params:netconf:capability:interleave:1.0",
)
NODE_MODULE_CAP = f"{NODE_NS}?module=etsi-qkd-sdn-node&revision=2022-01-30"

# Bounds, not expectations: every step normally takes a fraction of a second.
TOOL_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 15
KEYS_TIMEOUT_S = 15.0

T = TypeVar("T")


# --- scenario helpers ------------------------------------------------------------------------------
@dataclass
class Pair:
    alice: AgentHandle  # TRANSMITTER end
    bob: AgentHandle  # RECEIVER end
    link: str

    def link_xml(self, end: AgentHandle) -> str:
        if end is self.alice:
            return phys_link_xml(self.link, self.alice.node_id, self.bob.node_id, "TRANSMITTER")
        return phys_link_xml(self.link, self.bob.node_id, self.alice.node_id, "RECEIVER")

    def keys_at_both_ends(self) -> bool:
        return all(h.agent.keystore.stored_bits(self.link) > 0 for h in (self.alice, self.bob))

    async def provision(self) -> None:
        """Create the PHYS link on both ends with qsdn's own client and wait for the first keys."""
        async with self.alice.client() as ca, self.bob.client() as cb:
            await ca.edit_config(self.link_xml(self.alice))
            await cb.edit_config(self.link_xml(self.bob))
        await wait_until(self.keys_at_both_ends, timeout_s=KEYS_TIMEOUT_S)

    async def touch(self, end: AgentHandle) -> None:
        """A config change on ``end`` (it emits an RFC 6470 netconf-config-change notification)."""
        async with end.client() as c:
            await c.edit_config(
                f'<qkd_node xmlns="{NODE_NS}"><qkdn_version>touched</qkdn_version></qkd_node>'
            )

    async def cut_fibre(self) -> None:
        """Set the qsdn fault switch on alice's end of the link (a merge of just that leaf)."""
        cut = f"""<qkd_node xmlns="{NODE_NS}"><qkd_links><qkd_link><qkdl_id>{self.link}</qkdl_id>
          <qsdn_faults xmlns="{EMU_NS}"><fibre_cut>true</fibre_cut></qsdn_faults>
        </qkd_link></qkd_links></qkd_node>"""
        async with self.alice.client() as ca:
            await ca.edit_config(cut)


@pytest.fixture
async def node(start_agent: AgentFactory, tmp_path: Path) -> AgentHandle:
    return await start_agent(node_config(tmp_path, "n1"))


@pytest.fixture
async def pair(start_agent: AgentFactory, tmp_path: Path) -> Pair:
    a_cfg, b_cfg = pair_configs(tmp_path)
    return Pair(await start_agent(a_cfg), await start_agent(b_cfg), str(uuid.uuid4()))


def child_names(data: etree._Element) -> list[str]:
    return [etree.QName(x).localname for x in data if isinstance(x.tag, str)]


def xp(el: etree._Element, path: str) -> Any:
    return el.xpath(path, namespaces=NS)


def assert_link_down(notification: etree._Element, link: str) -> None:
    assert etree.QName(notification).namespace == NOTIF_NS
    assert xp(notification, "notif:eventTime/text()"), "a notification carries its eventTime"
    assert xp(notification, "n:sdqkdn_link_down/n:qkd_link/n:qkdl_id/text()") == [link]
    reason = xp(notification, "string(n:sdqkdn_link_down/n:qkd_link/n:reason)")
    assert reason.strip(), "sdqkdn_link_down names its reason"


# --- netconf-console2 as a subprocess -------------------------------------------------------------
XML_DECL = re.compile(r"<\?xml[^>]*\?>")
NOTIFICATION_RE = re.compile(r"<(?:\w+:)?notification\b.*?</(?:\w+:)?notification>", re.DOTALL)


def console_argv(h: AgentHandle, *args: str) -> list[str]:
    return [
        str(NETCONF_CONSOLE),
        "--host",
        "127.0.0.1",
        "--port",
        str(h.port),
        "-u",
        USER,
        "-p",
        PASSWORD,
        "--reply-timeout",
        str(RPC_TIMEOUT_S),
        *args,
    ]


def console_env() -> dict[str, str]:
    # Unbuffered, so a long-running console's replies and notifications reach us as they happen.
    return dict(os.environ, PYTHONUNBUFFERED="1")


def split_documents(out: str) -> list[str]:
    """netconf-console2 prints each command's reply as one XML document with its own declaration."""
    return [d.strip() for d in XML_DECL.split(out) if d.strip()]


def documents(out: str) -> list[etree._Element]:
    return [etree.fromstring(d.encode()) for d in split_documents(out)]


def complete_documents(out: str) -> list[etree._Element]:
    """The documents of ``out`` read so far, up to the first one still being written."""
    done: list[etree._Element] = []
    for d in split_documents(out):
        try:
            done.append(etree.fromstring(d.encode()))
        except etree.XMLSyntaxError:
            break
    return done


def notifications(out: str) -> list[etree._Element]:
    """The notifications a subscribed netconf-console2 printed (raw, as received), in order."""
    return [etree.fromstring(m.encode()) for m in NOTIFICATION_RE.findall(out)]


@dataclass
class ConsoleResult:
    rc: int
    out: str
    err: str

    def replies(self) -> list[etree._Element]:
        return documents(self.out)


async def console(h: AgentHandle, *args: str, timeout_s: float = TOOL_TIMEOUT_S) -> ConsoleResult:
    """Run netconf-console2 to completion against ``h``; killed if it outlives ``timeout_s``."""
    proc = await asyncio.create_subprocess_exec(
        *console_argv(h, *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=console_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"netconf-console2 {' '.join(args)} did not finish in {timeout_s} s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return ConsoleResult(proc.returncode, out.decode(), err.decode())


class ConsoleProcess:
    """A long-running netconf-console2 (interactive, or listening on a subscription), read as it writes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = ""

    async def read_until(self, pred: Callable[[str], bool], timeout_s: float = TOOL_TIMEOUT_S) -> str:
        """Read stdout until ``pred(everything read so far)``; fails on EOF or timeout."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                while not pred(self.out):
                    chunk = await self.proc.stdout.read(65536)
                    if not chunk:
                        raise AssertionError(f"netconf-console2 exited; its output was:\n{self.out}")
                    self.out += chunk.decode()
        except TimeoutError:
            raise AssertionError(f"expected output not seen in {timeout_s} s; got:\n{self.out}") from None
        return self.out

    async def command(self, line: str) -> etree._Element:
        """Send one interactive command and return its reply (the next XML document on stdout)."""
        assert self.proc.stdin is not None
        before = len(complete_documents(self.out))
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        await self.read_until(lambda out: len(complete_documents(out)) > before)
        return complete_documents(self.out)[before]

    async def finish(self) -> int:
        """End an interactive console by closing its stdin (it then closes its session and exits)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return await asyncio.wait_for(self.proc.wait(), TOOL_TIMEOUT_S)


@contextlib.asynccontextmanager
async def console_process(h: AgentHandle, *args: str, stdin: bool = False) -> AsyncIterator[ConsoleProcess]:
    proc = await asyncio.create_subprocess_exec(
        *console_argv(h, *args),
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=console_env(),
    )
    try:
        yield ConsoleProcess(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), TOOL_TIMEOUT_S)


async def test_console_hello_lists_capabilities_and_etsi_module(node: AgentHandle) -> None:
    res = await console(node, "--hello")
    assert res.rc == 0, res.err
    [hello] = res.replies()
    assert etree.QName(hello).localname == "hello"
    caps = xp(hello, "nc:capabilities/nc:capability/text()")
    for cap in REQUIRED_CAPS:
        assert cap in caps
    assert any(c.startswith(NODE_MODULE_CAP) for c in caps)
    assert any("module=etsi-qkd-node-types&revision=2022-01-30" in c for c in caps)


async def test_console_get_with_subtree_filter_returns_node_state(pair: Pair) -> None:
    h = pair.alice
    # --filter builds a subtree filter from a path: <qkd_node xmlns=...><qkdn_status/></qkd_node>
    res = await console(h, "--get", "--filter", "/n:qkd_node/qkdn_status", "--ns", f"n={NODE_NS}")
    assert res.rc == 0, res.err
    [data] = res.replies()
    assert child_names(data) == ["qkd_node"]
    assert child_names(data[0]) == ["qkdn_status"]
    [status] = xp(data, "n:qkd_node/n:qkdn_status/text()")
    assert status.endswith(":OPERATING")
    # a content-match node in the filter ([qkdi_id=1]) and a selection below it
    res = await console(
        h,
        "--get",
        "--filter",
        "/n:qkd_node/qkd_interfaces/qkd_interface[qkdi_id=1]/qkdi_status",
        "--ns",
        f"n={NODE_NS}",
    )
    assert res.rc == 0, res.err
    [data] = res.replies()
    [iface] = xp(data, "n:qkd_node/n:qkd_interfaces/n:qkd_interface")
    assert child_names(iface) == ["qkdi_id", "qkdi_status"]
    assert xp(iface, "n:qkdi_id/text()") == ["1"]
    # the XPath filter (:xpath capability) through -x
    res = await console(h, "--get", "-x", "/n:qkd_node/n:qkdn_status", "--ns", f"n={NODE_NS}")
    assert res.rc == 0, res.err
    [data] = res.replies()
    assert [x.endswith(":OPERATING") for x in xp(data, "n:qkd_node/n:qkdn_status/text()")] == [True]
    assert not xp(data, "n:qkd_node/n:qkdn_id")


async def test_console_get_config_has_identity_and_no_state(pair: Pair) -> None:
    h = pair.alice
    res = await console(h, "--get-config")
    assert res.rc == 0, res.err
    [data] = res.replies()
    assert xp(data, "n:qkd_node/n:qkdn_id/text()") == [h.node_id]
    assert xp(data, "n:qkd_node/n:qkd_interfaces/n:qkd_interface/n:qkdi_id/text()") == ["1"]
    assert not xp(data, "//n:qkdn_status")  # config false


async def test_console_edit_config_creates_phys_link_on_both_ends(pair: Pair, tmp_path: Path) -> None:
    for end in (pair.alice, pair.bob):
        f = tmp_path / f"link-{end.node_id}.xml"
        f.write_text(pair.link_xml(end))
        res = await console(end, "--edit-config", str(f))
        assert res.rc == 0, res.out + res.err
        [reply] = res.replies()
        assert etree.QName(reply).localname == "ok", res.out
        res = await console(end, "--get-config", "--filter", "/n:qkd_node/qkd_links", "--ns", f"n={NODE_NS}")
        [data] = res.replies()
        assert xp(data, "n:qkd_node/n:qkd_links/n:qkd_link/n:qkdl_id/text()") == [pair.link]
    await wait_until(pair.keys_at_both_ends, timeout_s=KEYS_TIMEOUT_S)
    res = await console(pair.alice, "--get", "--filter", "/n:qkd_node/qkd_links", "--ns", f"n={NODE_NS}")
    [data] = res.replies()
    [skr] = xp(data, "n:qkd_node/n:qkd_links/n:qkd_link/n:qkdl_performance/n:skr/text()")
    assert int(skr) > 0


async def test_console_lock_unlock_and_lock_denied_while_held(node: AgentHandle) -> None:
    res = await console(node, "--lock", "--unlock")
    assert res.rc == 0, res.err
    assert [etree.QName(r).localname for r in res.replies()] == ["ok", "ok"]
    assert "running" not in node.agent.datastores.locks

    # A second console, interactive (commands on stdin), holds the lock while a third asks for it.
    async with console_process(node, "--interactive", stdin=True) as holder:
        reply = await holder.command("lock")
        assert etree.QName(reply).localname == "ok"
        holder_sid = node.agent.datastores.locks["running"]
        denied = await console(node, "--lock")
        assert denied.rc != 0
        [err] = denied.replies()
        assert xp(err, "//nc:error-tag/text()") == ["lock-denied"]
        assert xp(err, "//nc:error-info/nc:session-id/text()") == [str(holder_sid)]
        reply = await holder.command("unlock")
        assert etree.QName(reply).localname == "ok"
        assert "running" not in node.agent.datastores.locks
        res = await console(node, "--lock", "--unlock")
        assert [etree.QName(r).localname for r in res.replies()] == ["ok", "ok"]
        assert await holder.finish() == 0


async def test_console_get_schema_of_both_etsi_modules(node: AgentHandle) -> None:
    args = [a for name in ETSI_MODULES for a in ("--get-schema", name)]
    res = await console(node, *args)
    assert res.rc == 0, res.err
    replies = res.replies()
    assert len(replies) == len(ETSI_MODULES)
    for name, data in zip(ETSI_MODULES, replies, strict=True):
        assert etree.QName(data).localname == "data"
        assert (data.text or "").lstrip().startswith(f"module {name} {{")
    assert "module etsi-qkd-sdn-node" in res.out


async def test_console_subscription_receives_link_down_on_fibre_cut(pair: Pair) -> None:
    await pair.provision()
    listen = ("--sleep", str(TOOL_TIMEOUT_S))  # only bounds how long a console listens; it is killed sooner
    xpath_filter = ("-x", "/n:sdqkdn_link_down", "--ns", f"n={NODE_NS}")
    # Two consoles subscribed on bob, the far end of the cut: one to everything, one through an
    # RFC 5277 XPath filter (netconf-console2 puts it, correctly, in the notification namespace).
    async with (
        console_process(pair.bob, "--create-subscription", "NETCONF", *listen) as everything,
        console_process(pair.bob, "--create-subscription", "NETCONF", *xpath_filter, *listen) as only_down,
    ):
        for sub in (everything, only_down):
            await sub.read_until(lambda out: "<ok" in out)  # the create-subscription reply
        assert len(pair.bob.agent.bus.subscriptions) == 2
        await pair.touch(pair.bob)  # an RFC 6470 config change, before the cut
        await pair.cut_fibre()
        for sub in (everything, only_down):
            await sub.read_until(lambda out: any(xp(n, "n:sdqkdn_link_down") for n in notifications(out)))
    seen = notifications(everything.out)
    events = [etree.QName(n[1]).localname for n in seen]  # n[0] is eventTime
    # (performance updates may come in between: the link was producing key)
    assert "netconf-config-change" in events[: events.index("sdqkdn_link_down")]
    assert_link_down(seen[events.index("sdqkdn_link_down")], pair.link)
    # Notifications reach a session in the order they were raised: had the filter let the earlier
    # config change (or a performance update) through, it would be printed before the link-down.
    [down] = notifications(only_down.out)
    assert_link_down(down, pair.link)
    assert "netconf-config-change" not in only_down.out


# --- ncclient in a worker thread -----------------------------------------------------------------
async def blocking(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Run one blocking ncclient call in a thread, behind a timeout (ncclient has its own, too)."""
    return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kw), TOOL_TIMEOUT_S)


@contextlib.asynccontextmanager
async def ncclient_session(h: AgentHandle) -> AsyncIterator[manager.Manager]:
    m = await blocking(
        manager.connect,
        host="127.0.0.1",
        port=h.port,
        username=USER,
        password=PASSWORD,
        hostkey_verify=False,
        look_for_keys=False,
        allow_agent=False,
        timeout=RPC_TIMEOUT_S,
    )
    try:
        yield m
    finally:
        await blocking(_close, m)


def _close(m: manager.Manager) -> None:
    try:
        if m.connected:
            m.close_session()
    finally:
        # ncclient has no public force-close: end its transport thread even if close-session failed
        m._session.close()


def config_el(body: str) -> str:
    return f'<config xmlns="{NC_NS}">{body}</config>'


async def test_ncclient_server_capabilities(node: AgentHandle) -> None:
    async with ncclient_session(node) as m:
        caps = list(m.server_capabilities)
        for cap in REQUIRED_CAPS:
            assert cap in caps
        assert any(c.startswith(NODE_MODULE_CAP) for c in caps)
        assert ":candidate" in m.server_capabilities
        assert m.session_id is not None and int(m.session_id) in node.agent.sessions


async def test_ncclient_get_with_subtree_filter_returns_node_state(pair: Pair) -> None:
    async with ncclient_session(pair.alice) as m:
        flt = f'<qkd_node xmlns="{NODE_NS}"><qkdn_status/><qkd_interfaces/></qkd_node>'
        reply = await blocking(m.get, filter=("subtree", flt))
        data = reply.data_ele
        assert child_names(data) == ["qkd_node"]
        assert child_names(data[0]) == ["qkdn_status", "qkd_interfaces"]
        [status] = xp(data, "n:qkd_node/n:qkdn_status/text()")
        assert status.endswith(":OPERATING")
        assert xp(data, "n:qkd_node/n:qkd_interfaces/n:qkd_interface/n:qkdi_status")


async def test_ncclient_get_config(pair: Pair) -> None:
    async with ncclient_session(pair.alice) as m:
        reply = await blocking(m.get_config, source="running")
        data = reply.data_ele
        assert xp(data, "n:qkd_node/n:qkdn_id/text()") == [pair.alice.node_id]
        assert xp(data, "n:qkd_node/n:qkd_interfaces/n:qkd_interface/n:qkdi_id/text()") == ["1"]
        assert not xp(data, "//n:qkdn_status")


async def test_ncclient_edit_config_creates_phys_link_on_both_ends(pair: Pair) -> None:
    for end in (pair.alice, pair.bob):
        async with ncclient_session(end) as m:
            reply = await blocking(m.edit_config, target="running", config=config_el(pair.link_xml(end)))
            assert reply.ok
            flt = f'<qkd_node xmlns="{NODE_NS}"><qkd_links/></qkd_node>'
            data = (await blocking(m.get_config, source="running", filter=("subtree", flt))).data_ele
            assert xp(data, "n:qkd_node/n:qkd_links/n:qkd_link/n:qkdl_id/text()") == [pair.link]
            assert xp(data, "n:qkd_node/n:qkd_links/n:qkd_link/n:qkdl_local/n:qkdn_id/text()") == [
                end.node_id
            ]
    await wait_until(pair.keys_at_both_ends, timeout_s=KEYS_TIMEOUT_S)


async def test_ncclient_lock_unlock_and_lock_denied(node: AgentHandle) -> None:
    async with ncclient_session(node) as m1, ncclient_session(node) as m2:
        assert (await blocking(m1.lock, target="running")).ok
        assert node.agent.datastores.locks["running"] == int(m1.session_id)
        with pytest.raises(RPCError) as ei:
            await blocking(m2.lock, target="running")
        assert ei.value.tag == "lock-denied"
        assert f">{m1.session_id}<" in (ei.value.info or "")
        edit = config_el(f'<qkd_node xmlns="{NODE_NS}"><qkdn_version>x</qkdn_version></qkd_node>')
        with pytest.raises(RPCError) as ei:
            await blocking(m2.edit_config, target="running", config=edit)
        assert ei.value.tag == "in-use"
        assert (await blocking(m1.unlock, target="running")).ok
        assert (await blocking(m2.lock, target="running")).ok
        assert (await blocking(m2.unlock, target="running")).ok
    assert "running" not in node.agent.datastores.locks


async def test_ncclient_get_schema_of_both_etsi_modules(node: AgentHandle) -> None:
    async with ncclient_session(node) as m:
        for name in ETSI_MODULES:
            reply = await blocking(m.get_schema, name)
            assert (reply.data or "").lstrip().startswith(f"module {name} {{")
        reply = await blocking(m.get_schema, "etsi-qkd-sdn-node", "2022-01-30", "yang")
        assert f'namespace "{NODE_NS}"' in reply.data


async def take_link_down(m: manager.Manager, link: str) -> etree._Element:
    """Take notifications until an ``sdqkdn_link_down``; returns it (performance updates may precede it)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + TOOL_TIMEOUT_S
    while loop.time() < end:
        note = await blocking(m.take_notification, True, 1.0)
        if note is None:
            continue
        root = etree.fromstring(note.notification_xml.encode())
        if xp(root, "n:sdqkdn_link_down"):
            return root
    raise AssertionError(f"no sdqkdn_link_down for {link} within {TOOL_TIMEOUT_S} s")


async def test_ncclient_subscription_receives_link_down_on_fibre_cut(pair: Pair) -> None:
    await pair.provision()
    async with ncclient_session(pair.bob) as m:
        assert (await blocking(m.create_subscription)).ok
        assert len(pair.bob.agent.bus.subscriptions) == 1
        await pair.cut_fibre()
        assert_link_down(await take_link_down(m, pair.link), pair.link)
        # :interleave: the subscribed session still answers RPCs
        flt = f'<qkd_node xmlns="{NODE_NS}"><qkdn_status/></qkd_node>'
        reply = await blocking(m.get, filter=("subtree", flt))
        assert xp(reply.data_ele, "n:qkd_node/n:qkdn_status")


LINK_DOWN_SELECTOR = f'<sdqkdn_link_down xmlns="{NODE_NS}"/>'


@pytest.mark.parametrize(
    "form",
    [
        # RFC 5277: <filter> in the notification namespace (what netconf-console2 sends)
        pytest.param("notification-ns", id="filter-element-in-notification-ns"),
        # ncclient's create_subscription(filter=("subtree", ...)) puts <filter> in the base NETCONF
        # namespace; the agent used to ignore it silently and send every event (regression test).
        pytest.param("ncclient-tuple", id="ncclient-filter-tuple"),
    ],
)
async def test_ncclient_filtered_subscription_gets_only_matching_events(pair: Pair, form: str) -> None:
    await pair.provision()
    if form == "ncclient-tuple":
        flt: Any = ("subtree", LINK_DOWN_SELECTOR)
    else:
        flt = to_ele(f'<filter xmlns="{NOTIF_NS}" type="subtree">{LINK_DOWN_SELECTOR}</filter>')
    async with ncclient_session(pair.bob) as m:
        assert (await blocking(m.create_subscription, filter=flt)).ok
        await pair.touch(pair.bob)  # an RFC 6470 config change the filter must drop
        await pair.cut_fibre()
        # Events reach a session in the order they were raised: anything the filter let through
        # (that config change, a performance update) would come before the link-down.
        note = await blocking(m.take_notification, True, TOOL_TIMEOUT_S - 5)
        assert note is not None, "no notification at all"
        assert_link_down(etree.fromstring(note.notification_xml.encode()), pair.link)


# --- agent shutdown with a client still connected ----------------------------------------------
async def test_agent_stop_closes_ssh_connections(node: AgentHandle) -> None:
    """A client that keeps its SSH connection (and NETCONF channel) open is disconnected on stop.

    Regression test: stop() used to close only the listener and the channels (asyncssh's
    SSHAcceptor.close() leaves connections open), which leaked the accepted sockets in-process.
    """
    conn = await asyncio.wait_for(
        asyncssh.connect("127.0.0.1", node.port, username=USER, password=PASSWORD, known_hosts=None),
        TOOL_TIMEOUT_S,
    )
    try:
        await conn.create_process(subsystem="netconf", encoding=None)  # a NETCONF session, never closed
        await wait_until(lambda: len(node.agent.sessions) == 1)
        await node.agent.stop()
        assert not node.agent.sessions
        await asyncio.wait_for(conn.wait_closed(), TOOL_TIMEOUT_S)  # the server ended the connection
    finally:
        conn.close()
        await asyncio.wait_for(conn.wait_closed(), TOOL_TIMEOUT_S)
