"""The default southbound client: qsdn's asyncio NETCONF client (:mod:`qsdn.netconf.client`).

It shares the agent's framing and message code and pipelines requests on one SSH channel; this
module only adds the :class:`~controller.southbound.base.NodeClient` contract on top: argument
checks, the node's name in every error, :class:`NodeUnreachableError` for anything that is not an
answer, an overall bound on opening the session, and a notification feed that ends with the
session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Literal, TypeVar

import asyncssh
from lxml import etree

from controller.southbound.base import (
    NodeEndpoint,
    NodeRpcError,
    NodeUnreachableError,
    NotificationFeed,
    check_commit_args,
    check_datastore,
    check_edit_options,
    check_reply,
    config_element,
    describe,
    filter_element,
    reply_data,
    schema_text,
)
from qsdn.errors import QsdnError
from qsdn.netconf.client import NetconfClient, NetconfRpcError
from qsdn.netconf.messages import Notification, RpcReply
from qsdn.netconf.xml import MONITORING_NS, NC_NS, ns_map

log = logging.getLogger(__name__)

T = TypeVar("T")
_State = Literal["new", "open", "closed"]


class AsyncsshNodeClient:
    """:class:`~controller.southbound.base.NodeClient` over :class:`qsdn.netconf.client.NetconfClient`."""

    def __init__(self, endpoint: NodeEndpoint) -> None:
        self._endpoint = endpoint
        self._node = endpoint.address
        self._nc = NetconfClient(
            endpoint.host,
            endpoint.port,
            endpoint.username,
            password=endpoint.password,
            client_keys=list(endpoint.client_keys) or None,
            known_hosts=endpoint.known_hosts,
            timeout_s=endpoint.timeout_s,
        )
        self._state: _State = "new"
        self._feed = NotificationFeed(self._node)
        self._pump: asyncio.Task[None] | None = None
        self._session_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<AsyncsshNodeClient {self._node} session={self.session_id} {self._state}>"

    @property
    def endpoint(self) -> NodeEndpoint:
        return self._endpoint

    @property
    def session_id(self) -> int | None:
        return self._nc.session_id

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self._nc.server_capabilities

    async def __aenter__(self) -> AsyncsshNodeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- session ---------------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"{self!r}: a client opens one session; make a new client to reconnect")
        self._state = "open"
        timeout_s = self._endpoint.timeout_s
        try:
            # NetconfClient bounds the SSH handshake and the hello separately; this bounds the whole.
            await asyncio.wait_for(self._nc.connect(), timeout_s)
        except TimeoutError:
            await self.close()
            raise NodeUnreachableError(
                self._node, f"cannot open a NETCONF session: no session within {timeout_s} s"
            ) from None
        except (QsdnError, OSError, asyncssh.Error) as exc:
            await self.close()
            cause = exc.__cause__ if isinstance(exc, QsdnError) and exc.__cause__ else exc
            raise NodeUnreachableError(
                self._node, f"cannot open a NETCONF session: {describe(cause)}"
            ) from exc
        except BaseException:
            await self.close()
            raise
        # The reader task ends when the session does. NetconfClient has no public hook for that
        # yet (see the southbound report): this is the one place that reaches inside it.
        self._session_task = self._nc._reader_task
        if self._session_task is not None:
            self._session_task.add_done_callback(self._on_session_end)
        self._pump = asyncio.get_running_loop().create_task(
            self._pump_notifications(), name=f"southbound-notifications-{self._node}"
        )
        log.debug("node %s: NETCONF session %s open (asyncssh)", self._node, self.session_id)

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        self._feed.end()
        try:
            await self._nc.close()
        except Exception as exc:  # close never raises; the transport is gone either way
            log.warning("node %s: error while closing the session: %s", self._node, describe(exc))
        finally:
            if self._pump is not None:
                self._pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._pump
                self._pump = None
        log.debug("node %s: session closed (asyncssh)", self._node)

    def _on_session_end(self, _task: asyncio.Task[None]) -> None:
        # Hand over what arrived before the end, then end the feed (with a cause unless we closed).
        while not self._nc.notifications.empty():
            self._feed.put(self._nc.notifications.get_nowait())
        if self._state != "closed":
            log.warning("node %s: the node ended the NETCONF session", self._node)
        self._feed.end(None if self._state == "closed" else "the NETCONF session was closed by the node")
        if self._pump is not None:
            self._pump.cancel()

    async def _pump_notifications(self) -> None:
        queue = self._nc.notifications
        while True:
            self._feed.put(await queue.get())

    # --- requests --------------------------------------------------------------------------------
    def _session_lost(self) -> bool:
        return self._session_task is not None and self._session_task.done()

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        if self._state != "open" or self._nc.session_id is None:
            if asyncio.iscoroutine(call):
                call.close()
            state = "was closed" if self._state == "closed" else "is not connected"
            raise NodeUnreachableError(self._node, f"{what}: the client {state}")
        if self._session_lost():
            if asyncio.iscoroutine(call):
                call.close()
            raise NodeUnreachableError(self._node, f"{what}: the NETCONF session was closed by the node")
        try:
            return await call
        except NetconfRpcError as exc:
            raise NodeRpcError(self._node, exc.errors) from None
        except QsdnError as exc:
            raise NodeUnreachableError(
                self._node, f"{what}: {_strip_node(exc.first.message, self._node)}"
            ) from exc
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise NodeUnreachableError(self._node, f"{what}: {describe(exc)}") from exc

    async def _rpc(self, what: str, op: etree._Element) -> RpcReply:
        reply = await self._call(what, self._nc.rpc(op, check=False))
        return check_reply(self._node, what, reply)

    async def get(
        self,
        subtree: str | None = None,
        xpath: str | None = None,
        nsmap: Mapping[str, str] | None = None,
    ) -> etree._Element:
        op = _op("get", filter_element(subtree, xpath, nsmap))
        return reply_data(self._node, "get", await self._rpc("get", op))

    async def get_config(
        self,
        source: str = "running",
        subtree: str | None = None,
        xpath: str | None = None,
        nsmap: Mapping[str, str] | None = None,
    ) -> etree._Element:
        op = _op("get-config", _datastore("source", check_datastore(source, "source")))
        f = filter_element(subtree, xpath, nsmap)
        if f is not None:
            op.append(f)
        return reply_data(self._node, "get-config", await self._rpc("get-config", op))

    async def edit_config(
        self,
        config: str | bytes | etree._Element,
        target: str = "running",
        default_operation: str | None = None,
        test_option: str | None = None,
        error_option: str | None = None,
    ) -> None:
        check_datastore(target, "target")
        check_edit_options(default_operation, test_option, error_option)
        cfg = config_element(config)
        await self._checked(
            "edit-config",
            self._nc.edit_config(
                cfg,
                target,
                default_operation=default_operation,
                test_option=test_option,
                error_option=error_option,
            ),
        )

    async def lock(self, target: str) -> None:
        await self._checked("lock", self._nc.lock(check_datastore(target, "target")))

    async def unlock(self, target: str) -> None:
        await self._checked("unlock", self._nc.unlock(check_datastore(target, "target")))

    async def commit(
        self,
        confirmed: bool = False,
        confirm_timeout_s: int | None = None,
        persist: str | None = None,
        persist_id: str | None = None,
    ) -> None:
        check_commit_args(confirmed, confirm_timeout_s, persist, persist_id)
        await self._checked(
            "commit",
            self._nc.commit(
                confirmed=confirmed,
                confirm_timeout_s=confirm_timeout_s,
                persist=persist,
                persist_id=persist_id,
            ),
        )

    async def cancel_commit(self, persist_id: str | None = None) -> None:
        await self._checked("cancel-commit", self._nc.cancel_commit(persist_id))

    async def discard_changes(self) -> None:
        await self._checked("discard-changes", self._nc.discard_changes())

    async def validate(self, source: str) -> None:
        await self._checked("validate", self._nc.validate(check_datastore(source, "source")))

    async def get_schema(self, identifier: str, version: str | None = None) -> str:
        ns = MONITORING_NS
        op = etree.Element(f"{{{ns}}}get-schema", nsmap=ns_map(ns))
        etree.SubElement(op, f"{{{ns}}}identifier").text = identifier
        if version is not None:
            etree.SubElement(op, f"{{{ns}}}version").text = version
        etree.SubElement(op, f"{{{ns}}}format").text = "yang"
        return schema_text(self._node, await self._rpc("get-schema", op))

    async def subscribe(self, subtree: str | None = None) -> None:
        await self._checked("create-subscription", self._nc.create_subscription(subtree))

    def notifications(self) -> AsyncIterator[Notification]:
        return aiter(self._feed)

    async def _checked(self, what: str, call: Awaitable[RpcReply]) -> None:
        check_reply(self._node, what, await self._call(what, call))


def _op(name: str, *children: etree._Element | None) -> etree._Element:
    op = etree.Element(f"{{{NC_NS}}}{name}", nsmap=ns_map(NC_NS))
    for child in children:
        if child is not None:
            op.append(child)
    return op


def _datastore(holder: str, name: str) -> etree._Element:
    el = etree.Element(f"{{{NC_NS}}}{holder}")
    etree.SubElement(el, f"{{{NC_NS}}}{name}")
    return el


def _strip_node(message: str, node: str) -> str:
    """NetconfClient prefixes some messages with ``host:port: ``; ours carry the node already."""
    prefix = f"{node}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
