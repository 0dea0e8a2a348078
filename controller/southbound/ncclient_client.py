"""The ncclient southbound client: ncclient's Manager, kept off the event loop and tuned.

ncclient is blocking and runs two threads of its own per session (its session loop and paramiko's
transport). This client:

- runs every blocking ncclient call in a small executor owned by the client, behind
  ``asyncio.wait_for`` (ncclient's own timeout is ``timeout_s`` too), so the event loop never waits
  on it; ``close()`` runs in a daemon thread of its own so it cannot queue behind stuck calls;
- opens the TCP connection itself, sets ``TCP_NODELAY`` on it before the SSH handshake and hands it
  to ncclient (``SSHSession.connect(sock=...)``; paramiko keeps it as ``transport.sock``);
- replaces ncclient's 100 ms polling tick for this session only: ncclient's session loop sends at
  most one queued request per turn and then waits in ``select(timeout=TICK)``, with ``TICK`` a
  module constant of ``ncclient.transport.session`` read on every turn. :class:`_TunedSSHSession`
  adds a wake-up socket to that select, written on every ``send()``, so a request leaves at once
  instead of at the next tick, and bounds each select by ``tick_s`` (default 10 ms) for the one
  case no file descriptor signals (the SSH window re-opening). The module constant is left alone;
  it also reads 64 KiB per turn instead of ncclient's 4 KiB (``BUF_SIZE``), which cuts the
  re-scanning ncclient's chunked-framing parser does on large replies;
- sets ``raise_mode`` to ``RaiseMode.NONE`` so ncclient never raises on ``<rpc-error>``: every reply
  is parsed with :func:`qsdn.netconf.messages.parse_rpc_reply`, exactly as the asyncssh client
  does, and errors become :class:`NodeRpcError` with the same :class:`ErrorInfo` records (an
  ``RPCError`` raised anyway is converted from its raw XML, see :func:`rpc_error_infos`);
- replaces ncclient's notification queue (which grows without bound unless someone calls
  ``take_notification``) by a session listener that parses each notification in ncclient's thread
  and hands it to the event loop with ``call_soon_threadsafe``: no extra thread, no polling, and
  the listener's ``errback`` ends the feed when the node drops the session;
- closes by force: ``<close-session>`` with a short timeout, then the transport even if that
  failed, then the socket is shut down and requests still waiting are failed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import selectors
import socket
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import paramiko  # type: ignore[import-untyped]
from lxml import etree
from ncclient import manager
from ncclient.operations.errors import MissingCapabilityError, TimeoutExpiredError
from ncclient.operations.rpc import RaiseMode, RPCError, RPCReplyListener
from ncclient.transport import NCClientError, SessionListener
from ncclient.transport.session import NotificationHandler
from ncclient.transport.ssh import SSHSession

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
    notification_filter_element,
    reply_data,
    schema_text,
)
from qsdn.errors import ErrorInfo, ErrorType, QsdnError
from qsdn.netconf import xml as ncxml
from qsdn.netconf.messages import Notification, RpcReply, parse_notification, parse_rpc_reply
from qsdn.netconf.xml import NC_NS, NOTIFICATION_NS

log = logging.getLogger(__name__)

T = TypeVar("T")
_State = Literal["new", "connecting", "open", "closed"]

#: Polling bound of the tuned session loop (ncclient's own is 100 ms).
DEFAULT_TICK_S = 0.01
#: Bytes read from the SSH channel per turn of the session loop (ncclient's own is 4096).
DEFAULT_READ_CHUNK_BYTES = 65536
#: Concurrent blocking calls per client (pipelined requests each hold a thread while waiting).
DEFAULT_MAX_THREADS = 4
#: Bound on each step of close(): <close-session>, then closing the transport.
CLOSE_TIMEOUT_S = 2.0
#: ncclient times a request out after timeout_s; the asyncio bound fires only if that fails.
_GRACE_S = 1.0


class _Abandoned(Exception):
    """connect() gave up (timeout or close) while the blocking connect was still running."""


_NOTIFICATION_TAG = f"{{{NOTIFICATION_NS}}}notification"
_SESSION_CLOSED = "the NETCONF session was closed by the node"
# What a dead or misbehaving transport raises out of ncclient and paramiko.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    NCClientError,
    paramiko.SSHException,
    OSError,
    EOFError,
    etree.LxmlError,
)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*_TRANSPORT_ERRORS, _Abandoned)
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *_TRANSPORT_ERRORS)


class _TunedSSHSession(SSHSession):  # type: ignore[misc]
    """ncclient's SSH session with a wake-on-send select, a per-session tick and bigger reads."""

    def __init__(self, device_handler: Any, *, tick_s: float, read_chunk_bytes: int, name: str) -> None:
        super().__init__(device_handler)
        self.name = name
        self._tick_s = tick_s
        self._read_chunk_bytes = read_chunk_bytes
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def _transport_register(self, selector: selectors.BaseSelector, event: int) -> None:
        # Called once by Session.run() with the selector its loop waits on.
        super()._transport_register(selector, event)
        wake = self._wake_r
        selector.register(wake, selectors.EVENT_READ)
        select = selector.select
        tick_s = self._tick_s

        def select_or_wake(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            del timeout  # ncclient's module TICK; this session uses its own
            events = select(tick_s)
            ready = [ev for ev in events if ev[0].fileobj is not wake]
            if len(ready) < len(events):
                with contextlib.suppress(OSError):
                    wake.recv(1)  # one byte per send(): one turn (one message sent) per wake-up
            return ready

        selector.select = select_or_wake  # type: ignore[method-assign]

    def send(self, message: str) -> None:
        super().send(message)
        # BlockingIOError: plenty of wake-ups already pending; closed: the session is ending.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _transport_read(self) -> bytes:
        data: bytes = self._channel.recv(self._read_chunk_bytes)
        return data

    def close(self) -> None:
        try:
            if self._transport is not None:
                super().close()
        finally:
            self.release_wakeup()

    def release_wakeup(self) -> None:
        self._wake_r.close()
        self._wake_w.close()


class _NotificationForwarder(SessionListener):  # type: ignore[misc]
    """Runs in ncclient's session thread: notifications and the session's end go to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, feed: NotificationFeed, node: str) -> None:
        self._loop = loop
        self._feed = feed
        self._node = node

    def callback(self, root: tuple[str, Mapping[str, str]], raw: str) -> None:
        if root[0] != _NOTIFICATION_TAG:
            return
        try:
            notification = parse_notification(ncxml.parse(raw.encode("utf-8")))
        except QsdnError as exc:
            log.warning("node %s: dropped a malformed notification: %s", self._node, exc)
            return
        self._post(self._feed.put, notification)

    def errback(self, ex: BaseException) -> None:
        log.debug("node %s: ncclient session ended: %s", self._node, describe(ex))
        self._post(self._feed.end, _SESSION_CLOSED)

    def _post(self, fn: Callable[[Any], None], arg: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(fn, arg)


class NcclientNodeClient:
    """:class:`~controller.southbound.base.NodeClient` over ncclient's :class:`manager.Manager`."""

    def __init__(
        self,
        endpoint: NodeEndpoint,
        *,
        tick_s: float = DEFAULT_TICK_S,
        read_chunk_bytes: int = DEFAULT_READ_CHUNK_BYTES,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        if not tick_s > 0 or read_chunk_bytes < 1 or max_threads < 1:
            raise ValueError("tick_s, read_chunk_bytes and max_threads must be positive")
        self._endpoint = endpoint
        self._node = endpoint.address
        self._tick_s = tick_s
        self._read_chunk_bytes = read_chunk_bytes
        self._executor = ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix=f"ncclient-{self._node}"
        )
        self._state: _State = "new"
        self._feed = NotificationFeed(self._node)
        self._lock = threading.Lock()  # guards the fields the connect thread fills in
        self._abandoned = False
        self._sock: socket.socket | None = None
        self._session: _TunedSSHSession | None = None
        self._m: Any = None  # manager.Manager
        self._session_id: int | None = None
        self._capabilities: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<NcclientNodeClient {self._node} session={self._session_id} {self._state}>"

    @property
    def endpoint(self) -> NodeEndpoint:
        return self._endpoint

    @property
    def session_id(self) -> int | None:
        return self._session_id

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self._capabilities

    async def __aenter__(self) -> NcclientNodeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- session ---------------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"{self!r}: a client opens one session; make a new client to reconnect")
        self._state = "connecting"
        loop = asyncio.get_running_loop()
        timeout_s = self._endpoint.timeout_s
        try:
            m = await asyncio.wait_for(loop.run_in_executor(self._executor, self._open, loop), timeout_s)
        except TimeoutError:
            await self.close()
            raise NodeUnreachableError(
                self._node, f"cannot open a NETCONF session: no session within {timeout_s} s"
            ) from None
        except _CONNECT_ERRORS as exc:
            await self.close()
            raise NodeUnreachableError(self._node, f"cannot open a NETCONF session: {describe(exc)}") from exc
        except BaseException:
            await self.close()
            raise
        if self._closed():  # closed while the blocking connect ran
            await self.close()
            raise NodeUnreachableError(self._node, "cannot open a NETCONF session: the client was closed")
        self._m = m
        self._state = "open"
        try:
            self._session_id = int(m.session_id)
        except (TypeError, ValueError):
            self._session_id = None
        self._capabilities = tuple(m.server_capabilities)
        log.debug("node %s: NETCONF session %s open (ncclient)", self._node, self._session_id)

    def _closed(self) -> bool:
        return self._state == "closed"

    def _adopt(self, *, sock: socket.socket | None = None, session: _TunedSSHSession | None = None) -> None:
        """Record what the connect thread made so close() can tear it down; undo it if close() ran."""
        with self._lock:
            if not self._abandoned:
                if sock is not None:
                    self._sock = sock
                if session is not None:
                    self._session = session
                return
        if session is not None:
            session.release_wakeup()
        if sock is not None:
            sock.close()
        raise _Abandoned("the client was closed")

    def _open(self, loop: asyncio.AbstractEventLoop) -> Any:
        """The blocking part of connect(), in a worker thread."""
        ep = self._endpoint
        sock = socket.create_connection((ep.host, ep.port), timeout=ep.timeout_s)
        self._adopt(sock=sock)  # from now on close() shuts it down, whatever this thread is doing
        # Before the SSH handshake: every segment of the session goes out at once.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handler = manager.make_device_handler(None)
        session = _TunedSSHSession(
            handler,
            tick_s=self._tick_s,
            read_chunk_bytes=self._read_chunk_bytes,
            name=f"ncclient-{self._node}",
        )
        self._adopt(session=session)
        if ep.known_hosts is not None:
            session.load_known_hosts(ep.known_hosts)
        session.connect(
            host=ep.host,
            port=ep.port,
            sock=sock,
            timeout=ep.timeout_s,
            username=ep.username,
            password=ep.password,
            key_filename=list(ep.client_keys) or None,
            allow_agent=False,
            look_for_keys=False,
            hostkey_verify=ep.known_hosts is not None,
        )
        builtin = session.get_listener_instance(NotificationHandler)
        if builtin is not None:
            session.remove_listener(builtin)
        session.add_listener(_NotificationForwarder(loop, self._feed, self._node))
        return manager.Manager(session, handler, timeout=ep.timeout_s, raise_mode=RaiseMode.NONE)

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        self._feed.end()
        with self._lock:
            self._abandoned = True  # a connect still running in its thread gives up
            m, session = self._m, self._session
        try:
            if m is not None and session is not None and session.connected:
                m.timeout = CLOSE_TIMEOUT_S  # no more requests: bound the close-session wait
                try:
                    await asyncio.wait_for(_in_daemon_thread(m.close_session, self._node), CLOSE_TIMEOUT_S)
                except _CLOSE_ERRORS as exc:
                    log.debug(
                        "node %s: close-session failed (%s), closing the transport", self._node, describe(exc)
                    )
        finally:
            await self._teardown(session)
        log.debug("node %s: session closed (ncclient)", self._node)

    async def _teardown(self, session: _TunedSSHSession | None) -> None:
        try:
            if session is not None:
                try:
                    await asyncio.wait_for(_in_daemon_thread(session.close, self._node), CLOSE_TIMEOUT_S)
                except _CLOSE_ERRORS as exc:
                    log.warning("node %s: closing the transport failed: %s", self._node, describe(exc))
        finally:
            sock = self._sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes paramiko's thread if it is still reading
                sock.close()
            if session is not None:
                session.release_wakeup()
                listener = session.get_listener_instance(RPCReplyListener)
                if listener is not None:  # requests still waiting fail now, not at their timeout
                    listener.errback(NCClientError("session closed by the client"))
            self._executor.shutdown(wait=False, cancel_futures=True)

    # --- requests --------------------------------------------------------------------------------
    def _require(self, what: str) -> Any:
        if self._state != "open":
            state = "was closed" if self._state == "closed" else "is not connected"
            raise NodeUnreachableError(self._node, f"{what}: the client {state}")
        if self._session is None or not self._session.connected:
            raise NodeUnreachableError(self._node, f"{what}: {_SESSION_CLOSED}")
        return self._m

    async def _rpc(self, what: str, call: Callable[[Any], Any]) -> RpcReply:
        m = self._require(what)
        loop = asyncio.get_running_loop()
        timeout_s = self._endpoint.timeout_s

        def run() -> RpcReply:
            reply = call(m)  # ncclient RPCReply; raise_mode NONE: errors are in the reply
            return parse_rpc_reply(ncxml.parse(reply.xml.encode("utf-8")))

        try:
            pending = loop.run_in_executor(self._executor, run)
        except RuntimeError:  # the executor was shut down by a concurrent close()
            raise NodeUnreachableError(self._node, f"{what}: the client was closed") from None
        try:
            reply = await asyncio.wait_for(pending, timeout_s + _GRACE_S)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if pending.cancelled() and task is not None and not task.cancelling():
                # close() dropped the queued call (executor shutdown): not our caller's cancellation
                raise NodeUnreachableError(self._node, f"{what}: the client was closed") from None
            raise
        except (TimeoutError, TimeoutExpiredError):
            raise NodeUnreachableError(self._node, f"{what}: no reply within {timeout_s} s") from None
        except RPCError as exc:
            raise NodeRpcError(self._node, rpc_error_infos(exc)) from None
        except MissingCapabilityError as exc:
            info = ErrorInfo(
                tag="operation-not-supported",
                type=ErrorType.PROTOCOL,
                message=f"{what}: {exc} (ncclient checks capabilities before sending)",
            )
            raise NodeRpcError(self._node, [info]) from None
        except QsdnError as exc:  # our parser refused the reply
            raise NodeUnreachableError(self._node, f"{what}: malformed reply: {exc}") from exc
        except _TRANSPORT_ERRORS as exc:
            if self._state == "closed":
                cause = "the client was closed"
            elif not self._session_connected():
                cause = _SESSION_CLOSED
            else:
                cause = describe(exc)
            raise NodeUnreachableError(self._node, f"{what}: {cause}") from exc
        return check_reply(self._node, what, reply)

    def _session_connected(self) -> bool:
        return self._session is not None and bool(self._session.connected)

    async def get(
        self,
        subtree: str | None = None,
        xpath: str | None = None,
        nsmap: Mapping[str, str] | None = None,
    ) -> etree._Element:
        f = filter_element(subtree, xpath, nsmap)
        reply = await self._rpc("get", lambda m: m.get(filter=f))
        return reply_data(self._node, "get", reply)

    async def get_config(
        self,
        source: str = "running",
        subtree: str | None = None,
        xpath: str | None = None,
        nsmap: Mapping[str, str] | None = None,
    ) -> etree._Element:
        check_datastore(source, "source")
        f = filter_element(subtree, xpath, nsmap)
        reply = await self._rpc("get-config", lambda m: m.get_config(source=source, filter=f))
        return reply_data(self._node, "get-config", reply)

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
        await self._rpc(
            "edit-config",
            lambda m: m.edit_config(
                config=cfg,
                target=target,
                default_operation=default_operation,
                test_option=test_option,
                error_option=error_option,
            ),
        )

    async def lock(self, target: str) -> None:
        check_datastore(target, "target")
        await self._rpc("lock", lambda m: m.lock(target=target))

    async def unlock(self, target: str) -> None:
        check_datastore(target, "target")
        await self._rpc("unlock", lambda m: m.unlock(target=target))

    async def commit(
        self,
        confirmed: bool = False,
        confirm_timeout_s: int | None = None,
        persist: str | None = None,
        persist_id: str | None = None,
    ) -> None:
        check_commit_args(confirmed, confirm_timeout_s, persist, persist_id)
        timeout = None if confirm_timeout_s is None else str(confirm_timeout_s)
        await self._rpc(
            "commit",
            lambda m: m.commit(confirmed=confirmed, timeout=timeout, persist=persist, persist_id=persist_id),
        )

    async def cancel_commit(self, persist_id: str | None = None) -> None:
        await self._rpc("cancel-commit", lambda m: m.cancel_commit(persist_id=persist_id))

    async def discard_changes(self) -> None:
        await self._rpc("discard-changes", lambda m: m.discard_changes())

    async def validate(self, source: str) -> None:
        check_datastore(source, "source")
        await self._rpc("validate", lambda m: m.validate(source=source))

    async def get_schema(self, identifier: str, version: str | None = None) -> str:
        reply = await self._rpc(
            "get-schema", lambda m: m.get_schema(identifier, version=version, format="yang")
        )
        return schema_text(self._node, reply)

    async def subscribe(self, subtree: str | None = None) -> None:
        f = notification_filter_element(subtree)
        await self._rpc("create-subscription", lambda m: m.create_subscription(filter=f))

    def notifications(self) -> AsyncIterator[Notification]:
        return aiter(self._feed)


def rpc_error_infos(exc: RPCError) -> list[ErrorInfo]:
    """The :class:`ErrorInfo` records of an ncclient ``RPCError``, parsed as qsdn parses replies.

    ``exc.xml`` is the ``<rpc-error>`` element (or the whole ``<rpc-reply>`` when there were several);
    it is wrapped in an ``<rpc-reply>`` and read with :func:`parse_rpc_reply`, so the records are
    the ones the asyncssh client gives for the same reply. Without usable XML, ncclient's parsed
    fields are used (its ``info`` is XML text, so ``info`` stays empty).
    """
    raw = getattr(exc, "xml", None)
    if etree.iselement(raw):
        reply_tag = f"{{{NC_NS}}}rpc-reply"
        if raw.tag == reply_tag:
            root = raw
        else:
            root = etree.Element(reply_tag, nsmap=ncxml.ns_map(NC_NS))
            root.append(copy.deepcopy(raw))
        with contextlib.suppress(QsdnError):
            errors = parse_rpc_reply(ncxml.parse(ncxml.tostring(root))).errors
            if errors:
                return errors
    try:
        error_type = ErrorType(exc.type or "application")
    except ValueError:
        error_type = ErrorType.APPLICATION
    return [
        ErrorInfo(
            tag=exc.tag or "operation-failed",
            message=(exc.message or str(exc)).strip(),
            type=error_type,
            path=(exc.path or "").strip() or None,
            app_tag=exc.app_tag,
            severity=exc.severity or "error",
        )
    ]


def _in_daemon_thread(fn: Callable[[], T], node: str) -> asyncio.Future[T]:
    """Run a blocking call in a daemon thread of its own (never queued behind stuck calls)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, None, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name=f"ncclient-close-{node}", daemon=True).start()
    return fut
