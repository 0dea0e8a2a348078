"""What the RESTCONF server needs from the controller, and a complete in-memory implementation.

The server (``restconf.py``) knows HTTP and RFC 8040; the controller knows the network. Between them is
:class:`RestconfBackend`: the schema, the configuration datastore as canonical XML, an atomic
replacement of that datastore, the data with state, operations, and each node's own ETSI GS QKD 015
data. Every string crossing this boundary is XML (libyang's canonical printing); no libyang node
crosses it.

The server computes every new configuration datastore itself (see ``edit.py``) and calls
:meth:`RestconfBackend.replace_config` with the whole of it, so a backend implements one write: validate
the new datastore, act on the difference, keep the old one on any refusal.

:class:`MemoryBackend` is a real backend without a network: it keeps the datastore in memory, validated
by libyang, derives the state from the configuration and an optional callback, and dispatches
operations to handlers. Tests use it; the controller can wrap it or replace it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal, Protocol

from controller.northbound import datatree
from qsdn.errors import OperationNotSupportedError, QsdnError
from qsdn.yang import SchemaContext

log = logging.getLogger(__name__)

Content = Literal["config", "nonconfig", "all"]

#: Modules a northbound schema implements: qsdn's orchestrator model; the ETSI 015 node model whose
#: data ``get-node-data`` returns (implemented so that it is printed and advertised properly); the
#: RESTCONF protocol modules (errors, yang-library, monitoring) and with-defaults for the
#: report-all-tagged annotation.
NORTHBOUND_MODULES: tuple[tuple[str, Sequence[str]], ...] = (
    ("qsdn-orchestrator", ()),
    ("etsi-qkd-node-types", ()),
    ("etsi-qkd-sdn-node", ()),
    ("qsdn-qkd-emulation", ()),
    ("qsdn-entanglement", ()),
    ("ietf-restconf", ()),
    ("ietf-yang-library", ()),
    ("ietf-restconf-monitoring", ()),
    ("ietf-netconf-with-defaults", ()),
)


def northbound_schema() -> SchemaContext:
    """A schema context with :data:`NORTHBOUND_MODULES` (build it once per process)."""
    return SchemaContext(NORTHBOUND_MODULES, only_present=True)


class RestconfBackend(Protocol):
    """The controller as the RESTCONF server sees it."""

    @property
    def schema(self) -> SchemaContext:
        """The process's schema context; it implements at least ``qsdn-orchestrator``."""
        ...

    def config_xml(self) -> str:
        """The configuration datastore: its top-level nodes as canonical XML (``""`` when empty)."""
        ...

    async def replace_config(self, new_xml: str, *, user: str) -> None:
        """Validate ``new_xml`` as the whole configuration datastore and apply it atomically.

        Raises :class:`~qsdn.errors.QsdnError` (with data paths) and keeps the old datastore when the
        new one is refused."""
        ...

    def state_xml(self) -> str:
        """Configuration and state data, validated, as XML."""
        ...

    async def invoke(self, rpc: str, input_xml: str, *, user: str) -> str:
        """Run the operation ``module:rpc``; ``input_xml`` is the validated RPC element with its input
        (defaults filled in). Returns the RPC (or ``output``) element holding the output, ``""`` when
        there is none."""
        ...

    async def node_data(self, qkdn_id: str, content: str) -> str:
        """The node's own ``etsi-qkd-sdn-node:qkd_node`` tree as XML, fetched through the controller;
        ``content`` is ``config``, ``nonconfig`` or ``all``. Raises a QsdnError with tag
        ``resource-denied`` when the node cannot be reached."""
        ...


#: An operation handler of :class:`MemoryBackend`: ``(input_xml, user) -> output_xml``.
RpcHandler = Callable[[str, str], "str | Awaitable[str]"]
#: Produces the state nodes (with the list keys that locate them) for a configuration.
StateProvider = Callable[[str], str]
#: Fetches a node's 015 data: ``(qkdn_id, content) -> XML``.
NodeDataProvider = Callable[[str, str], Awaitable[str]]


class MemoryBackend:
    """A :class:`RestconfBackend` that keeps the configuration datastore in memory.

    Every replacement is validated by libyang and stored canonically (explicitly set nodes, libyang's
    order and value formats); a refused one leaves the datastore unchanged.
    """

    def __init__(
        self,
        schema: SchemaContext,
        rpc_handlers: Mapping[str, RpcHandler] | None = None,
        *,
        state: StateProvider | None = None,
        node_data: NodeDataProvider | None = None,
        config_xml: str = "",
    ) -> None:
        self._schema = schema
        self._handlers: dict[str, RpcHandler] = dict(rpc_handlers or {})
        self._state = state
        self._node_data = node_data
        self._config = self._canonical(config_xml)

    @property
    def schema(self) -> SchemaContext:
        return self._schema

    def _canonical(self, xml: str) -> str:
        with datatree.parse(self._schema, xml, "xml", config_only=True) as tree:
            return tree.print("xml")

    def config_xml(self) -> str:
        return self._config

    async def replace_config(self, new_xml: str, *, user: str) -> None:
        canonical = self._canonical(new_xml)
        if canonical != self._config:
            log.info("configuration datastore replaced by %s (%d bytes)", user, len(canonical))
        self._config = canonical

    def state_xml(self) -> str:
        with datatree.parse(self._schema, self._config, "xml", config_only=True, validate=False) as tree:
            if self._state is not None:
                extra = self._state(self._config)
                with datatree.parse(self._schema, extra, "xml", config_only=False, validate=False) as st:
                    tree.merge(st)
            datatree.validate_tree(tree, config_only=False)
            return tree.print("xml")

    def add_handler(self, rpc: str, handler: RpcHandler) -> None:
        """Serve operation ``module:rpc`` with ``handler``."""
        self._handlers[rpc] = handler

    async def invoke(self, rpc: str, input_xml: str, *, user: str) -> str:
        handler = self._handlers.get(rpc)
        if handler is None:
            raise OperationNotSupportedError(f"operation {rpc} is not implemented by this controller")
        result = handler(input_xml, user)
        if inspect.isawaitable(result):
            result = await result
        return str(result)

    async def node_data(self, qkdn_id: str, content: str) -> str:
        if self._node_data is None:
            raise QsdnError(
                f"node {qkdn_id} cannot be reached: this backend has no southbound",
                tag="resource-denied",
                info={"qkdn_id": qkdn_id},
            )
        return await self._node_data(qkdn_id, content)
