"""The controller's view of one node: :class:`NodeClient`, its endpoint, its errors, shared helpers.

A :class:`NodeClient` is one NETCONF session (RFC 6241) to one node agent. Two implementations
pass the same contract suite (``tests/functional/test_southbound_contract.py``):
:class:`~controller.southbound.asyncssh_client.AsyncsshNodeClient` (qsdn's own asyncio client, the
default) and :class:`~controller.southbound.ncclient_client.NcclientNodeClient` (ncclient in worker
threads). They send the same requests, parse every reply with :mod:`qsdn.netconf.messages`, and
therefore return the same types and raise the same errors:

- :class:`NodeRpcError` when the node answers ``<rpc-error>``: ``errors`` holds the node's
  :class:`~qsdn.errors.ErrorInfo` records exactly as parsed from the reply (tag, type, path,
  message, info; warnings included), the message names the node;
- :class:`NodeUnreachableError` for everything that is not an answer: connection refused,
  authentication or host-key failure, no reply within ``timeout_s``, a session the node closed, a
  reply that is not NETCONF;
- :class:`ValueError` for a call that could never be valid (an unknown datastore, both a subtree
  and an XPath filter, an edit option RFC 6241 does not define), raised before anything is sent.

One client is one session: after :meth:`NodeClient.close` (or after the node closed the session) a
new client is needed to talk to the node again.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lxml import etree

from qsdn.errors import ErrorInfo, ErrorType, QsdnError
from qsdn.netconf import xml as ncxml
from qsdn.netconf.messages import Notification, RpcReply
from qsdn.netconf.xml import NC_NS, NOTIFICATION_NS

log = logging.getLogger(__name__)

DATASTORES = ("running", "candidate", "startup")
DEFAULT_OPERATIONS = ("merge", "replace", "none")  # RFC 6241 section 7.2
TEST_OPTIONS = ("test-then-set", "set", "test-only")  # RFC 6241 section 7.2 and 8.6.4
ERROR_OPTIONS = ("stop-on-error", "continue-on-error", "rollback-on-error")
#: Notifications kept for a consumer that does not keep up; the oldest are dropped beyond this.
MAX_QUEUED_NOTIFICATIONS = 10000


# ------------------------------------------------------------------------------------------ endpoint


@dataclass(frozen=True)
class NodeEndpoint:
    """Where and how to reach one node's NETCONF server.

    ``client_keys`` are private key files, tried before the password. ``known_hosts`` is an OpenSSH
    ``known_hosts`` file to verify the node's host key against (``[host]:port`` entries for ports
    other than 22); ``None`` accepts any host key, as lab set-ups do. ``timeout_s`` bounds opening
    the session and every request. The password never appears in ``repr``.
    """

    host: str
    port: int
    username: str
    password: str | None = field(default=None, repr=False)
    client_keys: tuple[str, ...] = ()
    timeout_s: float = 30.0
    known_hosts: str | None = None

    def __post_init__(self) -> None:
        keys: Sequence[str | Path] = self.client_keys
        object.__setattr__(self, "client_keys", tuple(str(k) for k in keys))
        if not 0 < self.port < 65536:
            raise ValueError(f"node endpoint {self.host}: port {self.port} is outside 1..65535")
        if not self.timeout_s > 0:
            raise ValueError(f"node endpoint {self.address}: timeout_s must be positive")

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``), as error messages and logs name the node."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# -------------------------------------------------------------------------------------------- errors


class NodeError(QsdnError):
    """A request to a node failed; ``node`` is its ``host:port``."""

    def __init__(
        self,
        node: str,
        message: str,
        *,
        errors: list[ErrorInfo] | None = None,
        info: dict[str, str] | None = None,
    ) -> None:
        self.node = node
        super().__init__(message, errors=errors, info=info)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


class NodeRpcError(NodeError):
    """The node answered ``<rpc-error>``; ``errors`` are its records, unchanged."""

    def __init__(self, node: str, errors: list[ErrorInfo]) -> None:
        if not errors:
            raise ValueError("NodeRpcError needs the node's <rpc-error> records")
        first = next((e for e in errors if e.severity == "error"), errors[0])
        where = f" at {first.path}" if first.path else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        text = f"{node}: rpc-error {first.tag}: {first.message}{where}{more}"
        super().__init__(node, text, errors=list(errors))

    @property
    def first(self) -> ErrorInfo:
        """The first record of severity ``error`` (warnings may come before it)."""
        return next((e for e in self.errors if e.severity == "error"), self.errors[0])


class NodeUnreachableError(NodeError):
    """No answer from the node: connection, authentication, timeout, session lost, not NETCONF."""

    tag = "operation-failed"
    type = ErrorType.TRANSPORT

    def __init__(self, node: str, cause: str) -> None:
        self.cause = cause
        super().__init__(node, f"{node} unreachable: {cause}", info={"node": node})


def describe(exc: BaseException) -> str:
    """A one-line cause for an error message: the exception's text, or its type when it has none."""
    text = str(exc).strip()
    name = type(exc).__name__
    if not text:
        return name
    return text if isinstance(exc, QsdnError) else f"{name}: {text}"


def check_reply(node: str, what: str, reply: RpcReply) -> RpcReply:
    """Raise :class:`NodeRpcError` for a reply with an error; log warnings; return the reply."""
    if any(e.severity == "error" for e in reply.errors):
        raise NodeRpcError(node, reply.errors)
    for w in reply.errors:
        log.warning("node %s: %s: warning %s: %s", node, what, w.tag, w.message)
    return reply


# ----------------------------------------------------------------------------------------- protocol


class NodeClient(Protocol):
    """One NETCONF session to one node. Every method waits at most ``endpoint.timeout_s``."""

    @property
    def endpoint(self) -> NodeEndpoint: ...

    @property
    def session_id(self) -> int | None:
        """The session-id the node assigned in its ``<hello>``; ``None`` before :meth:`connect`."""
        ...

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The node's capability URIs, in the order of its ``<hello>``."""
        ...

    async def connect(self) -> None: ...

    async def close(self) -> None:
        """End the session (``<close-session>``, then the transport, forced); never raises."""
        ...

    async def __aenter__(self) -> NodeClient: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def get(
        self,
        subtree: str | None = None,
        xpath: str | None = None,
        nsmap: Mapping[str, str] | None = None,
    ) -> etree._Element:
        """``<get>``; returns the reply's ``<data>`` element."""
        ...

    async def get_config(
        self,
        source: str = "running",
        subtree: str | None = None,
        xpath: str | None = None,
        nsmap: Mapping[str, str] | None = None,
    ) -> etree._Element:
        """``<get-config>``; returns the reply's ``<data>`` element."""
        ...

    async def edit_config(
        self,
        config: str | bytes | etree._Element,
        target: str = "running",
        default_operation: str | None = None,
        test_option: str | None = None,
        error_option: str | None = None,
    ) -> None:
        """``<edit-config>``: ``config`` is the content of ``<config>`` (or a ``<config>`` element)."""
        ...

    async def lock(self, target: str) -> None: ...

    async def unlock(self, target: str) -> None: ...

    async def commit(
        self,
        confirmed: bool = False,
        confirm_timeout_s: int | None = None,
        persist: str | None = None,
        persist_id: str | None = None,
    ) -> None: ...

    async def cancel_commit(self, persist_id: str | None = None) -> None: ...

    async def discard_changes(self) -> None: ...

    async def validate(self, source: str) -> None: ...

    async def get_schema(self, identifier: str, version: str | None = None) -> str:
        """RFC 6022 ``<get-schema>`` in YANG format; returns the module text."""
        ...

    async def subscribe(self, subtree: str | None = None) -> None:
        """RFC 5277 ``<create-subscription>`` to the NETCONF stream (optionally filtered)."""
        ...

    def notifications(self) -> AsyncIterator[Notification]:
        """The session's notifications in arrival order, for one consumer.

        Iteration ends after :meth:`close`; it raises :class:`NodeUnreachableError` when the node
        ends the session.
        """
        ...


# ------------------------------------------------------------------------------ request arguments


def check_datastore(name: str, role: str) -> str:
    if name not in DATASTORES:
        raise ValueError(f"{role} datastore {name!r} is not one of {', '.join(DATASTORES)}")
    return name


def check_edit_options(
    default_operation: str | None, test_option: str | None, error_option: str | None
) -> None:
    for what, value, allowed in (
        ("default-operation", default_operation, DEFAULT_OPERATIONS),
        ("test-option", test_option, TEST_OPTIONS),
        ("error-option", error_option, ERROR_OPTIONS),
    ):
        if value is not None and value not in allowed:
            raise ValueError(f"{what} {value!r} is not one of {', '.join(allowed)} (RFC 6241 7.2)")


def check_commit_args(
    confirmed: bool, confirm_timeout_s: int | None, persist: str | None, persist_id: str | None
) -> None:
    """RFC 6241 8.4.5.1: ``confirm-timeout`` and ``persist`` belong to a confirmed commit."""
    if not confirmed and (confirm_timeout_s is not None or persist is not None):
        raise ValueError("confirm_timeout_s and persist need confirmed=True (RFC 6241 8.4.5.1)")
    if persist is not None and persist_id is not None:
        raise ValueError("a commit carries persist (start) or persist_id (confirm), not both")
    if confirm_timeout_s is not None and confirm_timeout_s <= 0:
        raise ValueError(f"confirm_timeout_s must be positive, got {confirm_timeout_s}")


def filter_element(
    subtree: str | None, xpath: str | None, nsmap: Mapping[str, str] | None, *, ns: str = NC_NS
) -> etree._Element | None:
    """A ``<filter>`` (subtree, or XPath with its prefixes) in namespace ``ns``, or ``None``.

    ``ns`` is the base namespace for ``<get>``/``<get-config>`` and the RFC 5277 namespace for
    ``<create-subscription>``. A subtree may hold several top-level elements.
    """
    if subtree is not None and xpath is not None:
        raise ValueError("give a subtree filter or an XPath filter, not both")
    if subtree is not None:
        wrapped = b'<filter xmlns="' + ns.encode() + b'" type="subtree">' + subtree.encode() + b"</filter>"
        return _parse_fragment(wrapped, "subtree filter")
    if xpath is not None:
        el = etree.Element(f"{{{ns}}}filter", nsmap=dict(nsmap or {}))
        el.set("type", "xpath")
        el.set("select", xpath)
        return el
    return None


def notification_filter_element(subtree: str | None) -> etree._Element | None:
    return filter_element(subtree, None, None, ns=NOTIFICATION_NS)


def config_element(config: str | bytes | etree._Element) -> etree._Element:
    """The ``<config>`` element of an ``<edit-config>``, always a new tree (the caller's is untouched).

    ``config`` is the content of ``<config>`` as XML text (one or more top-level elements), an
    element to put inside ``<config>``, or a ``<config>`` element in the base namespace.
    """
    tag = f"{{{NC_NS}}}config"
    if isinstance(config, etree._Element):
        if config.tag == tag:
            return copy.deepcopy(config)
        wrapper = etree.Element(tag, nsmap=ncxml.ns_map(NC_NS))
        inner = copy.deepcopy(config)
        inner.tail = None
        wrapper.append(inner)
        return wrapper
    body = config.encode() if isinstance(config, str) else config
    return _parse_fragment(b'<config xmlns="' + NC_NS.encode() + b'">' + body + b"</config>", "config")


def _parse_fragment(wrapped: bytes, what: str) -> etree._Element:
    try:
        return ncxml.parse(wrapped)
    except QsdnError as exc:
        raise ValueError(f"{what} is not well-formed XML: {exc}") from None


def schema_text(node: str, reply: RpcReply) -> str:
    """The module text of a ``<get-schema>`` reply (RFC 6022 ``<data>`` in the monitoring namespace)."""
    for el in reply.output:
        if el.tag == f"{{{ncxml.MONITORING_NS}}}data":
            return el.text or ""
    raise NodeUnreachableError(node, "malformed reply: <get-schema> reply without <data>")


def reply_data(node: str, what: str, reply: RpcReply) -> etree._Element:
    if reply.data is None:
        raise NodeUnreachableError(node, f"malformed reply: <{what}> reply without <data>")
    return reply.data


# ------------------------------------------------------------------------------------ notifications


class NotificationFeed:
    """A session's notifications for one consumer, in order; ends with the session.

    Fed from the event loop (:meth:`put`, :meth:`end`); a thread must go through
    ``loop.call_soon_threadsafe``. Bounded: when the consumer falls behind, the oldest
    notification is dropped (and logged), as the session must not stall.
    """

    def __init__(self, node: str, maxsize: int = MAX_QUEUED_NOTIFICATIONS) -> None:
        self.node = node
        self._maxsize = maxsize
        self._queue: asyncio.Queue[Notification | None] = asyncio.Queue()
        self._ended = False
        self._cause: str | None = None
        self._dropped = 0

    @property
    def ended(self) -> bool:
        return self._ended

    def put(self, notification: Notification) -> None:
        if self._ended:
            return
        if self._queue.qsize() >= self._maxsize:
            self._queue.get_nowait()
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning(
                    "node %s: %d notification(s) dropped, consumer too slow", self.node, self._dropped
                )
        self._queue.put_nowait(notification)

    def end(self, cause: str | None = None) -> None:
        """No more notifications: after a close (``cause`` ``None``) or a lost session (its cause)."""
        if self._ended:
            return
        self._ended = True
        self._cause = cause
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[Notification]:
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)  # every later iteration ends too
                if self._cause is not None:
                    raise NodeUnreachableError(self.node, self._cause)
                return
            yield item
