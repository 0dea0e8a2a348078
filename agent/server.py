"""The NETCONF server over SSH (RFC 6241, RFC 6242) on asyncssh, and the agent that owns it.

One task per NETCONF session reads framed messages with an idle timeout and answers RPCs in order;
a second task per subscribed session sends notifications (RFC 5277 :interleave, so RPCs keep
working during a subscription). Every task has an owner: the session cancels and awaits its tasks
on exit, the agent kills and awaits every session on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh
from lxml import etree

from agent.config import AgentConfig, UserConfig
from agent.datastore import RUNNING, DatastoreManager, SessionInfo
from agent.drivers.base import EntanglementDriver, QkdDriver
from agent.keystore import KeyStore
from agent.kme import KmeServer
from agent.node import Node
from agent.notify import NotificationBus, Subscription
from agent.rpc import RpcHandler
from qsdn.errors import ErrorInfo, ErrorType, MalformedMessageError, QsdnError, TooBigError
from qsdn.netconf import messages
from qsdn.netconf import xml as ncxml
from qsdn.netconf.framing import Framing, FramingDecoder, encode
from qsdn.netconf.xml import MONITORING_NS, ns_map
from qsdn.schema import SchemaIndex
from qsdn.yang import SchemaContext, agent_schema

log = logging.getLogger(__name__)

CAPABILITIES_FIXED = (
    ncxml.CAP_BASE_1_0,
    ncxml.CAP_BASE_1_1,
    ncxml.CAP_WRITABLE_RUNNING,
    ncxml.CAP_CANDIDATE,
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    ncxml.CAP_VALIDATE_1_1,
    ncxml.CAP_ROLLBACK_ON_ERROR,
    "urn:ietf:params:netconf:capability:startup:1.0",
    "urn:ietf:params:netconf:capability:xpath:1.0",
    ncxml.CAP_NOTIFICATION,
    ncxml.CAP_INTERLEAVE,
    ncxml.CAP_WITH_DEFAULTS + "?basic-mode=explicit&also-supported=report-all,trim",
)


@dataclass
class Stats:
    in_rpcs: int = 0
    in_bad_rpcs: int = 0
    out_rpc_errors: int = 0
    out_notifications: int = 0


@dataclass
class AgentStats(Stats):
    in_bad_hellos: int = 0
    in_sessions: int = 0
    dropped_sessions: int = 0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class NetconfSession:
    """One NETCONF session on one SSH channel."""

    def __init__(self, agent: NetconfAgent, process: asyncssh.SSHServerProcess[bytes], sid: int) -> None:
        self.agent = agent
        self.process = process
        self.id = sid
        peer = process.get_extra_info("peername") or ("", 0)
        self.info = SessionInfo(
            session_id=sid, username=process.get_extra_info("username") or "", source_host=str(peer[0])
        )
        self.login_time = datetime.now(UTC)
        self.stats = Stats()
        self.decoder = FramingDecoder(agent.config.netconf.max_message_bytes)
        self.framing: Framing = "1.0"
        self.closing = False
        self.subscription: Subscription | None = None
        self.sub_filter: etree._Element | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._killed = asyncio.Event()

    # --- output ---------------------------------------------------------------------------------
    def send(self, message: bytes) -> None:
        if self.process.stdout.is_closing():
            return
        self.process.stdout.write(encode(message, self.framing))

    # --- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        cfg = self.agent.config.netconf
        self.send(messages.build_hello(self.agent.capabilities(), self.id))
        hello_done = False
        try:
            while not self.closing and not self._killed.is_set():
                timeout: float | None = cfg.hello_timeout_s if not hello_done else cfg.idle_timeout_s
                if self.subscription is not None:
                    timeout = None  # a subscribed session is not idle: it is listening
                data = await self._read(timeout)
                if data is None:
                    log.info("session %d: idle for %s s, closing", self.id, timeout)
                    break
                if not data:
                    break
                try:
                    msgs = self.decoder.feed(data)
                    if not hello_done and msgs:
                        # The decoder returns the hello alone and keeps what follows it buffered.
                        if not self._on_hello(msgs[0]):
                            return
                        hello_done = True
                        if self.framing == "1.1":
                            self.decoder.switch_to_chunked()
                        msgs = self.decoder.feed(b"")
                except (TooBigError, MalformedMessageError) as exc:
                    # RFC 6242 section 4.2: a framing error ends the session.
                    log.warning("session %d: %s; closing", self.id, exc)
                    self.send(self.agent.handler.error_reply({}, exc.errors))
                    break
                for msg in msgs:
                    await self._on_rpc(msg)
                    if self.closing or self._killed.is_set():
                        break
        except (asyncssh.Error, ConnectionError, BrokenPipeError) as exc:
            log.info("session %d: connection lost: %s", self.id, exc)
        finally:
            await self._cleanup()

    async def _read(self, timeout: float | None) -> bytes | None:  # noqa: ASYNC109
        """The next bytes from the client; b"" at end of input (or after kill), None on idle timeout."""
        if self._killed.is_set():
            return b""
        try:
            return bytes(await asyncio.wait_for(self.process.stdin.read(65536), timeout))
        except TimeoutError:
            return None
        except (asyncssh.Error, ConnectionError, BrokenPipeError):
            return b""

    def _on_hello(self, msg: bytes) -> bool:
        try:
            hello = messages.parse_hello(ncxml.parse(msg), from_server=False)
            self.framing = messages.negotiate_base(CAPABILITIES_FIXED, hello.capabilities)
        except QsdnError as exc:
            self.agent.stats.in_bad_hellos += 1
            log.warning("session %d: bad hello (%s); closing", self.id, exc)
            return False
        log.info(
            "session %d: %s@%s, base %s", self.id, self.info.username, self.info.source_host, self.framing
        )
        return True

    async def _on_rpc(self, msg: bytes) -> None:
        self.stats.in_rpcs += 1
        self.agent.stats.in_rpcs += 1
        try:
            rpc = messages.parse_rpc(ncxml.parse(msg))
        except messages.InvalidRpcError as exc:
            self._bad_rpc()
            self.send(self.agent.handler.error_reply(exc.rpc_attrs, exc.errors))
            return
        except QsdnError as exc:
            self._bad_rpc()
            self.send(self.agent.handler.error_reply({}, exc.errors))
            return
        reply = await self.agent.handler.handle(self, rpc)
        self.send(reply)
        await self._drain()

    async def _drain(self) -> None:
        """Wait until the client reads what we sent (SSH window): a silent client cannot grow our buffer."""
        try:
            await asyncio.wait_for(self.process.stdout.drain(), self.agent.config.netconf.idle_timeout_s)
        except TimeoutError:
            log.warning("session %d: the client stopped reading; closing", self.id)
            self.closing = True

    def _bad_rpc(self) -> None:
        self.stats.in_bad_rpcs += 1
        self.agent.stats.in_bad_rpcs += 1
        self.stats.out_rpc_errors += 1
        self.agent.stats.out_rpc_errors += 1

    def subscribe(self, stream: str, flt: etree._Element | None) -> None:
        self.subscription = self.agent.bus.subscribe(self.id, stream)
        self.sub_filter = None if flt is None else etree.fromstring(etree.tostring(flt))
        self._notifier = asyncio.get_running_loop().create_task(
            self._send_notifications(), name=f"netconf-notify-{self.id}"
        )

    async def _send_notifications(self) -> None:
        assert self.subscription is not None
        queue = self.subscription.queue
        while True:
            event = await queue.get()
            if not self.agent.handler.notification_matches(event.body, self.sub_filter):
                continue
            self.send(messages.build_notification(event.time, event.body))
            self.stats.out_notifications += 1
            self.agent.stats.out_notifications += 1

    async def kill(self, reason: str) -> None:
        log.info("session %d: %s", self.id, reason)
        self._killed.set()
        with contextlib.suppress(Exception):
            self.process.channel.close()

    async def _cleanup(self) -> None:
        if self._notifier is not None:
            self._notifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._notifier
        if self.subscription is not None:
            self.agent.bus.unsubscribe(self.subscription)
        try:
            await self.agent.datastores.session_closed(self.info)
        except QsdnError:
            log.exception("session %d: cleanup of datastore state failed", self.id)
        self.agent.sessions.pop(self.id, None)
        with contextlib.suppress(Exception):
            self.process.exit(0)
        log.info("session %d closed", self.id)


class _SSHServer(asyncssh.SSHServer):
    def __init__(self, agent: NetconfAgent) -> None:
        self.agent = agent
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self.agent.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self.agent.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        user = self.agent.users.get(username)
        if user is not None and user.authorized_keys is not None and self._conn is not None:
            self._conn.set_authorized_keys(str(user.authorized_keys))
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        user = self.agent.users.get(username)
        ok = user is not None and user.check_password(password)
        if not ok:
            log.warning("password authentication failed for user %r", username)
        return ok

    def public_key_auth_supported(self) -> bool:
        return True


class NetconfAgent:
    """The agent process's core: schema, datastores, driver, node, notifications and the SSH server."""

    def __init__(
        self,
        config: AgentConfig,
        driver: QkdDriver,
        keystore: KeyStore,
        schema: SchemaContext | None = None,
        entanglement: EntanglementDriver | None = None,
    ) -> None:
        self.config = config
        self.entanglement = entanglement
        self.schema = schema or agent_schema()
        self.index = SchemaIndex(self.schema)
        self.keystore = keystore
        self.driver = driver
        self.bus = NotificationBus()
        self.datastores = DatastoreManager(
            schema=self.schema,
            index=self.index,
            data_dir=config.data_dir,
            initial_running=Node.initial_config(config.node_id, config.location, driver),
            confirm_timeout_s=config.netconf.confirm_timeout_s,
        )
        self.node = Node(
            node_id=config.node_id,
            schema=self.schema,
            datastores=self.datastores,
            driver=driver,
            bus=self.bus,
            entanglement=entanglement,
        )
        self.handler = RpcHandler(self)
        self.kme: KmeServer | None = None
        if config.kme is not None:
            self.kme = KmeServer(
                config.kme,
                node_id=config.node_id,
                running=lambda: self.datastores.get(RUNNING),
                keystore=keystore,
                bus=self.bus,
                entanglement=entanglement,
            )
        self.writable_running = True
        self.users: dict[str, UserConfig] = {u.name: u for u in config.netconf.users}
        self.sessions: dict[int, NetconfSession] = {}
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.stats = AgentStats()
        self._ids = itertools.count(1)
        self._server: asyncssh.SSHAcceptor | None = None
        self._session_tasks: set[asyncio.Task[Any]] = set()
        self._caps: list[str] | None = None
        self.port: int | None = None

    # --- capabilities and monitoring ------------------------------------------------------------
    def capabilities(self) -> list[str]:
        if self._caps is None:
            caps = list(CAPABILITIES_FIXED)
            for m in self.schema.modules():
                if not m.implemented and m.name not in (
                    "ietf-inet-types",
                    "ietf-yang-types",
                    "etsi-qkd-node-types",
                ):
                    continue
                if m.name in ("yang", "ietf-netconf-nmda"):
                    continue
                cap = f"{m.namespace}?module={m.name}"
                if m.revision:
                    cap += f"&revision={m.revision}"
                if m.features:
                    cap += "&features=" + ",".join(m.features)
                caps.append(cap)
            self._caps = caps
        return self._caps

    def monitoring_state(self) -> str:
        """RFC 6022 ``netconf-state`` for ``<get>``."""
        ns = MONITORING_NS
        root = etree.Element(f"{{{ns}}}netconf-state", nsmap=ns_map(ns, {"ncm": ns}))

        def sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
            e = etree.SubElement(parent, f"{{{ns}}}{name}")
            if text is not None:
                e.text = text
            return e

        caps = sub(root, "capabilities")
        for c in self.capabilities():
            sub(caps, "capability", c)
        dss = sub(root, "datastores")
        for name in ("running", "candidate", "startup"):
            ds = sub(dss, "datastore")
            sub(ds, "name", name)
            holder = self.datastores.locks.get(name)
            if holder is not None:
                locks = sub(ds, "locks")
                gl = sub(locks, "global-lock")
                sub(gl, "locked-by-session", str(holder))
                sub(gl, "locked-time", _ts(self.datastores.lock_times.get(name, datetime.now(UTC))))
        schemas = sub(root, "schemas")
        for m in self.schema.modules():
            if m.filepath is None:
                continue
            s = sub(schemas, "schema")
            sub(s, "identifier", m.name)
            sub(s, "version", m.revision or "")
            sub(s, "format", "ncm:yang")
            sub(s, "namespace", m.namespace)
            sub(s, "location", "NETCONF")
        sessions = sub(root, "sessions")
        for sid, sess in sorted(self.sessions.items()):
            s = sub(sessions, "session")
            sub(s, "session-id", str(sid))
            sub(s, "transport", "ncm:netconf-ssh")
            sub(s, "username", sess.info.username or "unknown")
            if sess.info.source_host:
                sub(s, "source-host", sess.info.source_host)
            sub(s, "login-time", _ts(sess.login_time))
            sub(s, "in-rpcs", str(sess.stats.in_rpcs))
            sub(s, "in-bad-rpcs", str(sess.stats.in_bad_rpcs))
            sub(s, "out-rpc-errors", str(sess.stats.out_rpc_errors))
            sub(s, "out-notifications", str(sess.stats.out_notifications))
        st = sub(root, "statistics")
        a = self.stats
        sub(st, "netconf-start-time", _ts(a.started))
        sub(st, "in-bad-hellos", str(a.in_bad_hellos))
        sub(st, "in-sessions", str(a.in_sessions))
        sub(st, "dropped-sessions", str(a.dropped_sessions))
        sub(st, "in-rpcs", str(a.in_rpcs))
        sub(st, "in-bad-rpcs", str(a.in_bad_rpcs))
        sub(st, "out-rpc-errors", str(a.out_rpc_errors))
        sub(st, "out-notifications", str(a.out_notifications))
        return etree.tostring(root).decode()

    # --- SSH ------------------------------------------------------------------------------------
    def _host_key(self) -> asyncssh.SSHKey:
        path = self.config.netconf.host_key or (self.config.data_dir / "ssh_host_ed25519_key")
        if path.exists():
            return asyncssh.read_private_key(str(path))
        key = asyncssh.generate_private_key("ssh-ed25519")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        log.info("generated SSH host key %s", path)
        return key

    async def _process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        if process.subsystem != "netconf":
            process.stderr.write(b"this server only offers the netconf subsystem\n")
            process.exit(1)
            return
        if len(self.sessions) >= self.config.netconf.max_sessions:
            log.warning("refusing a session: %d sessions open", len(self.sessions))
            self.stats.dropped_sessions += 1
            process.exit(1)
            return
        sid = next(self._ids)
        session = NetconfSession(self, process, sid)
        self.sessions[sid] = session
        self.stats.in_sessions += 1
        task = asyncio.current_task()
        if task is not None:
            self._session_tasks.add(task)
        try:
            await session.run()
        finally:
            if task is not None:
                self._session_tasks.discard(task)

    async def start(self) -> None:
        await self.driver.start()
        if self.entanglement is not None:
            await self.entanglement.start()
        await self.node.start()
        nc = self.config.netconf
        self._server = await asyncssh.create_server(
            lambda: _SSHServer(self),
            nc.host,
            nc.port,
            server_host_keys=[self._host_key()],
            process_factory=self._process,
            encoding=None,
            line_editor=False,
            allow_scp=False,
            login_timeout=nc.hello_timeout_s,
            keepalive_interval=0,
        )
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else nc.port
        log.info("node %s: NETCONF over SSH on %s:%s", self.config.node_id, nc.host, self.port)
        if self.kme is not None:
            await self.kme.start()

    async def stop(self) -> None:
        """Stop accepting, end every session, then stop the hardware and close the stores."""
        if self.kme is not None:
            await self.kme.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for sess in list(self.sessions.values()):
            await sess.kill("agent shutting down")
        tasks = [t for t in self._session_tasks if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for t in pending:
                t.cancel()
            for t in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        for conn in list(self.connections):
            conn.close()
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)
        self.connections.clear()
        await self.node.close()
        await self.datastores.close()
        if self.entanglement is not None:
            await self.entanglement.stop()
        await self.driver.stop()
        self.keystore.close()


def build_agent(config: AgentConfig, schema: SchemaContext | None = None) -> NetconfAgent:
    """Assemble an agent with the emulated QKD driver from its configuration."""
    from agent.drivers.emulated_qkd import EmulatedInterfaceConfig, EmulatedQkdDriver
    from qsdn.physics.bb84 import DeviceParams

    config.data_dir.mkdir(parents=True, exist_ok=True)
    keystore = KeyStore(config.data_dir / "keys.sqlite")
    d = config.device
    driver = EmulatedQkdDriver(
        node_id=config.node_id,
        interfaces=[
            EmulatedInterfaceConfig(
                qkdi_id=i.qkdi_id,
                listen_host=i.listen_host,
                listen_port=i.listen_port,
                peer_host=i.peer_host,
                peer_port=i.peer_port,
                length_km=i.fibre.length_km,
                band=i.fibre.band,
                extra_loss_db=i.fibre.extra_loss_db,
                role_support=_role(i.role_support),
                model=i.model,
            )
            for i in config.interfaces
        ],
        keystore=keystore,
        device=DeviceParams(
            eta_det=d.eta_det, dark_count=d.dark_count, e_d=d.e_d, pulse_rate_hz=d.pulse_rate_hz
        ),
        tick_s=d.tick_s,
    )
    entanglement: EntanglementDriver | None = None
    if config.entanglement is not None:
        from agent.drivers.bbm92 import Bbm92Config
        from agent.drivers.entanglement_driver import EmulatedEntanglementDriver

        e = config.entanglement
        entanglement = EmulatedEntanglementDriver(
            config.node_id,
            host=e.medium_host,
            port=e.medium_port,
            keystore=keystore,
            timeout_s=e.timeout_s,
            bbm92=Bbm92Config(
                p_z=e.bbm92_p_z, block_size=e.bbm92_block_size, sample_fraction=e.bbm92_sample_fraction
            ),
        )
    return NetconfAgent(config, driver, keystore, schema, entanglement)


def _role(value: str) -> Any:
    from agent.drivers.base import LinkRole

    return LinkRole(value)


async def run_agent(config: AgentConfig, stop: asyncio.Event) -> None:
    agent = build_agent(config)
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()


__all__ = ["ErrorInfo", "ErrorType", "NetconfAgent", "NetconfSession", "Path", "build_agent", "run_agent"]
