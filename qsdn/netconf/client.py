"""A fast NETCONF client over SSH on asyncssh, sharing the server's framing and message code.

Used by the controller's southbound, the tests and the benchmarks. One client is one SSH
connection carrying one NETCONF session. Requests may be pipelined: each ``rpc()`` call waits for
the reply with its own message-id. Notifications go to :attr:`notifications` (a bounded queue).
Every network wait has a timeout; :meth:`close` always tears the connection down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import asyncssh
from lxml import etree

from qsdn.errors import ErrorType, QsdnError
from qsdn.netconf import messages
from qsdn.netconf import xml as ncxml
from qsdn.netconf.framing import Framing, FramingDecoder, encode
from qsdn.netconf.messages import Notification, RpcReply
from qsdn.netconf.xml import ns_map

log = logging.getLogger(__name__)

CLIENT_CAPABILITIES = (ncxml.CAP_BASE_1_0, ncxml.CAP_BASE_1_1)
ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes128-ctr",
)
NC = ncxml.NC_NS


class NetconfRpcError(QsdnError):
    """The server answered with ``<rpc-error>``; ``errors`` holds them as sent."""


class NetconfClient:
    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        *,
        password: str | None = None,
        client_keys: Sequence[str | Path] | None = None,
        known_hosts: str | None = None,
        timeout_s: float = 30.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self._client_keys = [str(k) for k in client_keys] if client_keys else None
        self._known_hosts = known_hosts
        self.timeout_s = timeout_s
        self.session_id: int | None = None
        self.server_capabilities: tuple[str, ...] = ()
        self.framing: Framing = "1.0"
        self.notifications: asyncio.Queue[Notification] = asyncio.Queue(maxsize=10000)
        self._decoder = FramingDecoder(max_message_bytes)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._writer: asyncssh.SSHWriter[bytes] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[RpcReply]] = {}
        self._hello: asyncio.Future[bytes] | None = None
        self._ids = itertools.count(1)
        self._closed_exc: BaseException | None = None

    async def __aenter__(self) -> NetconfClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- connection -----------------------------------------------------------------------------
    async def connect(self) -> None:
        try:
            self._conn = await asyncio.wait_for(
                asyncssh.connect(
                    self.host,
                    self.port,
                    username=self.username,
                    password=self._password,
                    client_keys=self._client_keys,
                    known_hosts=self._known_hosts,
                    agent_path=None,
                    # AES-GCM first: AES-NI makes it cheaper per packet than asyncssh's ChaCha20
                    encryption_algs=ENCRYPTION_ALGS,
                    preferred_auth="publickey,password" if self._client_keys else "password",
                ),
                self.timeout_s,
            )
            writer, reader, _ = await self._conn.open_session(subsystem="netconf", encoding=None)
            self._writer = writer
            self._hello = asyncio.get_running_loop().create_future()
            self._reader_task = asyncio.get_running_loop().create_task(
                self._read_loop(reader), name=f"netconf-client-{self.host}:{self.port}"
            )
            writer.write(encode(messages.build_hello(CLIENT_CAPABILITIES), "1.0"))
            hello_bytes = await asyncio.wait_for(self._hello, self.timeout_s)
            hello = messages.parse_hello(ncxml.parse(hello_bytes), from_server=True)
            self.session_id = hello.session_id
            self.server_capabilities = hello.capabilities
            self.framing = messages.negotiate_base(CLIENT_CAPABILITIES, hello.capabilities)
            if self.framing == "1.1":
                self._decoder.switch_to_chunked()
                self._deliver(self._decoder.feed(b""))
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            await self.close()
            raise QsdnError(
                f"cannot open a NETCONF session to {self.host}:{self.port}: {exc}",
                tag="operation-failed",
                type=ErrorType.TRANSPORT,
            ) from exc
        except BaseException:
            await self.close()
            raise

    async def _read_loop(self, reader: asyncssh.SSHReader[bytes]) -> None:
        try:
            while True:
                data = await reader.read(262144)
                if not data:
                    break
                msgs = self._decoder.feed(data)
                if self._hello is not None and not self._hello.done() and msgs:
                    self._hello.set_result(msgs[0])
                    # Anything behind the hello waits for the framing switch in connect().
                    continue
                self._deliver(msgs)
        except (asyncssh.Error, OSError, QsdnError) as exc:
            self._closed_exc = exc
        finally:
            err = QsdnError(
                f"NETCONF session to {self.host}:{self.port} closed"
                + (f": {self._closed_exc}" if self._closed_exc else ""),
                tag="operation-failed",
                type=ErrorType.TRANSPORT,
            )
            if self._hello is not None and not self._hello.done():
                self._hello.set_exception(err)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self._pending.clear()

    def _deliver(self, msgs: list[bytes]) -> None:
        for msg in msgs:
            root = ncxml.parse(msg)
            if messages.is_notification(root):
                n = messages.parse_notification(root)
                if self.notifications.full():
                    self.notifications.get_nowait()
                self.notifications.put_nowait(n)
                continue
            reply = messages.parse_rpc_reply(root)
            fut = self._pending.pop(reply.message_id or "", None)
            if fut is not None and not fut.done():
                fut.set_result(reply)
            else:
                log.warning("%s:%s: reply to unknown message-id %r", self.host, self.port, reply.message_id)

    async def close(self) -> None:
        if self._writer is not None and self._reader_task is not None and not self._reader_task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._close_session(), 2.0)
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.wait_closed(), 5.0)
            self._conn = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
            self._reader_task = None
        self._writer = None

    async def _close_session(self) -> None:
        op = etree.Element(f"{{{NC}}}close-session")
        await self.rpc(op, check=False)

    # --- RPCs ------------------------------------------------------------------------------------
    async def rpc(
        self, operation: etree._Element | bytes, *, check: bool = True, timeout_s: float | None = None
    ) -> RpcReply:
        if self._writer is None:
            raise QsdnError("NETCONF session is not open", type=ErrorType.TRANSPORT)
        mid = str(next(self._ids))
        fut: asyncio.Future[RpcReply] = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        try:
            self._writer.write(encode(messages.build_rpc(operation, mid), self.framing))
        except (OSError, asyncssh.Error) as exc:
            self._pending.pop(mid, None)
            raise QsdnError(
                f"NETCONF session to {self.host}:{self.port} is closed: {exc}",
                tag="operation-failed",
                type=ErrorType.TRANSPORT,
            ) from exc
        try:
            reply = await asyncio.wait_for(fut, timeout_s or self.timeout_s)
        except TimeoutError:
            self._pending.pop(mid, None)
            raise QsdnError(
                f"{self.host}:{self.port}: no reply within {timeout_s or self.timeout_s} s",
                tag="operation-failed",
                type=ErrorType.TRANSPORT,
            ) from None
        if check and reply.errors and any(e.severity == "error" for e in reply.errors):
            raise NetconfRpcError(reply.errors[0].message, errors=reply.errors)
        return reply

    @staticmethod
    def _op(name: str, *children: etree._Element) -> etree._Element:
        op = etree.Element(f"{{{NC}}}{name}", nsmap=ns_map(NC))
        for c in children:
            op.append(c)
        return op

    @staticmethod
    def _ds(holder: str, name: str) -> etree._Element:
        el = etree.Element(f"{{{NC}}}{holder}")
        etree.SubElement(el, f"{{{NC}}}{name}")
        return el

    @staticmethod
    def _filter(
        subtree: str | bytes | None, xpath: str | None, nsmap: dict[str, str] | None
    ) -> list[etree._Element]:
        if subtree is not None:
            body = subtree.encode() if isinstance(subtree, str) else subtree
            f = etree.fromstring(
                b'<filter xmlns="' + NC.encode() + b'" type="subtree">' + body + b"</filter>"
            )
            return [f]
        if xpath is not None:
            f = etree.Element(f"{{{NC}}}filter", nsmap=nsmap or {})
            f.set("type", "xpath")
            f.set("select", xpath)
            return [f]
        return []

    async def get(
        self,
        subtree: str | bytes | None = None,
        xpath: str | None = None,
        nsmap: dict[str, str] | None = None,
    ) -> etree._Element:
        reply = await self.rpc(self._op("get", *self._filter(subtree, xpath, nsmap)))
        assert reply.data is not None
        return reply.data

    async def get_config(
        self,
        source: str = "running",
        subtree: str | bytes | None = None,
        xpath: str | None = None,
        nsmap: dict[str, str] | None = None,
    ) -> etree._Element:
        reply = await self.rpc(
            self._op("get-config", self._ds("source", source), *self._filter(subtree, xpath, nsmap))
        )
        if reply.data is None:
            raise QsdnError("get-config reply without <data>", type=ErrorType.RPC)
        return reply.data

    async def edit_config(
        self,
        config: str | bytes | etree._Element,
        target: str = "running",
        *,
        default_operation: str | None = None,
        test_option: str | None = None,
        error_option: str | None = None,
    ) -> RpcReply:
        op = self._op("edit-config", self._ds("target", target))
        for name, value in (
            ("default-operation", default_operation),
            ("test-option", test_option),
            ("error-option", error_option),
        ):
            if value is not None:
                etree.SubElement(op, f"{{{NC}}}{name}").text = value
        # The configuration is spliced in as bytes, never parsed and moved into ``op``: lxml drops a
        # namespace declaration from a moved element when an ancestor declares the same namespace
        # (the default one included), which silently unbinds the prefix of an identityref value
        # such as ``<kind xmlns:m="urn:m">m:x</kind>`` inside ``<... xmlns="urn:m">``.
        if isinstance(config, etree._Element):
            cfg = etree.tostring(config)
        else:
            body = config.encode() if isinstance(config, str) else config
            etree.fromstring(b"<config>" + body + b"</config>")  # refuse malformed XML here, not at the agent
            cfg = b'<config xmlns="' + NC.encode() + b'">' + body + b"</config>"
        return await self.rpc(messages.splice(op, cfg))

    async def lock(self, target: str = "running") -> RpcReply:
        return await self.rpc(self._op("lock", self._ds("target", target)))

    async def unlock(self, target: str = "running") -> RpcReply:
        return await self.rpc(self._op("unlock", self._ds("target", target)))

    async def commit(
        self,
        *,
        confirmed: bool = False,
        confirm_timeout_s: int | None = None,
        persist: str | None = None,
        persist_id: str | None = None,
    ) -> RpcReply:
        op = self._op("commit")
        if confirmed:
            etree.SubElement(op, f"{{{NC}}}confirmed")
        if confirm_timeout_s is not None:
            etree.SubElement(op, f"{{{NC}}}confirm-timeout").text = str(confirm_timeout_s)
        if persist is not None:
            etree.SubElement(op, f"{{{NC}}}persist").text = persist
        if persist_id is not None:
            etree.SubElement(op, f"{{{NC}}}persist-id").text = persist_id
        return await self.rpc(op)

    async def discard_changes(self) -> RpcReply:
        return await self.rpc(self._op("discard-changes"))

    async def cancel_commit(self, persist_id: str | None = None) -> RpcReply:
        op = self._op("cancel-commit")
        if persist_id is not None:
            etree.SubElement(op, f"{{{NC}}}persist-id").text = persist_id
        return await self.rpc(op)

    async def validate(self, source: str = "candidate") -> RpcReply:
        return await self.rpc(self._op("validate", self._ds("source", source)))

    async def get_schema(self, identifier: str, version: str | None = None) -> str:
        ns = ncxml.MONITORING_NS
        op = etree.Element(f"{{{ns}}}get-schema", nsmap=ns_map(ns))
        etree.SubElement(op, f"{{{ns}}}identifier").text = identifier
        if version is not None:
            etree.SubElement(op, f"{{{ns}}}version").text = version
        etree.SubElement(op, f"{{{ns}}}format").text = "yang"
        reply = await self.rpc(op)
        for el in reply.output:
            if etree.QName(el).localname == "data":
                return el.text or ""
        raise QsdnError("get-schema reply without <data>", type=ErrorType.RPC)

    async def create_subscription(self, subtree_filter: str | None = None) -> RpcReply:
        ns = ncxml.NOTIFICATION_NS
        op = etree.Element(f"{{{ns}}}create-subscription", nsmap=ns_map(ns))
        if subtree_filter is not None:
            f = etree.fromstring(f'<filter xmlns="{ns}" type="subtree">{subtree_filter}</filter>')
            op.append(f)
        return await self.rpc(op)

    async def kill_session(self, session_id: int) -> RpcReply:
        op = self._op("kill-session")
        etree.SubElement(op, f"{{{NC}}}session-id").text = str(session_id)
        return await self.rpc(op)
